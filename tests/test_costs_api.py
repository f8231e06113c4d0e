"""`GET /v1/organization/costs` through a real gateway (issue M, items 1 and 2).

Who may read, OpenAI's page shape, line items split exactly, CSV equal to JSON, FOCUS columns,
zones whose days start at :30 and :45 past the UTC hour or last 23 and 25 hours, and cursor pages.
The ledger is written with the ledger writer's own statements (tests/support/ledger_fill.py);
the rates the rollups split with are the ones the gateway registered at its start.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.settings import AdminSettings
from policies.finance import FOCUS_COLUMNS
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.conftest import REDIS_URL
from tests.support import ledger_fill
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token, claims, hs256
from tests.support.harness import Gateway, TenantKey, gateway_settings, make_tenant, start_gateway

DAY = 86400
JAN_10 = int(datetime(2026, 1, 10, tzinfo=UTC).timestamp())
VERSION = DEFAULT_PRICE_TABLE.version_for("gpt-realtime")
# gpt-realtime: text in $4, text out $16, audio out $64 per 1M tokens: 100 text in, 3 text out and
# 1000 audio out cost 400 + 48 + 64,000 micro-USD, exactly.
TOKENS = (100, 0, 0, 1000)


@pytest.fixture(scope="module")
async def costs_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER))
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


@pytest.fixture(scope="module")
async def ledger(costs_gateway: Gateway) -> dict[str, Any]:
    """Two tenants; tenant A pays 64,448 on Jan 10 and 64,449 on Jan 12 (UTC noon), tenant B 1,000."""
    pool = costs_gateway.services.pool
    a, b = await make_tenant(pool, "costs-a"), await make_tenant(pool, "costs-b")
    records = [
        ledger_fill.session("vgs_ca1", a.tenant_id, a.key_id, "eu_1", (("team", "voice"),), JAN_10),
        ledger_fill.session("vgs_cb1", b.tenant_id, b.key_id, None, (), JAN_10),
        ledger_fill.response(
            "resp_ca1", "vgs_ca1", a.tenant_id, "gpt-realtime", JAN_10 + DAY / 2, TOKENS, 64_448, VERSION
        ),
        # One micro-USD more than the kinds' exact sum: each kind's exact share is its own amount
        # plus amount/64,448 of the extra one, so it goes to the largest remainder, output audio.
        ledger_fill.response(
            "resp_ca2", "vgs_ca1", a.tenant_id, "gpt-realtime", JAN_10 + 2.5 * DAY, TOKENS, 64_449, VERSION
        ),
        ledger_fill.transcription("vgs_cb1", b.tenant_id, "item_1", JAN_10 + DAY / 2, 60_000, 1_000),
    ]
    await ledger_fill.write(pool, records)
    return {"a": a, "b": b, "base": f"{costs_gateway.server.http_url}/v1/organization/costs"}


def finance(**extra: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {hs256(claims(roles=['finance'], **extra))}"}


def params(ledger: dict[str, Any], **extra: Any) -> dict[str, Any]:
    tenants = f"{ledger['a'].tenant_id},{ledger['b'].tenant_id}"
    return {"start_time": JAN_10, "end_time": JAN_10 + 5 * DAY, "project_ids": tenants, **extra}


async def get(ledger: dict[str, Any], headers: dict[str, str], **query: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(ledger["base"], params=query, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["code"], error["param"]) == (code, param)


async def test_no_credential_is_401_and_a_tenant_key_is_403(ledger: dict[str, Any]) -> None:
    tenant: TenantKey = ledger["a"]
    assert (await get(ledger, {}, **params(ledger))).status_code == 401
    forbidden = await get(ledger, {"authorization": f"Bearer {tenant.secret}"}, **params(ledger))
    assert_error(forbidden, 403, "insufficient_role")
    assert tenant.secret not in forbidden.text
    tenant_admin = {"authorization": f"Bearer {hs256(claims(roles=['tenant_admin'], tenant_id=tenant.tenant_id))}"}
    denied = await get(ledger, tenant_admin, **params(ledger))
    assert_error(denied, 403, "insufficient_role")
    # The same answer as the alert log and the dashboard: the permission it lacks, not one it holds.
    assert denied.json()["error"]["message"] == "This token's roles do not allow finance:read."


async def test_bad_parameters_are_openai_shaped_400s(ledger: dict[str, Any]) -> None:
    assert_error(await get(ledger, finance(), **params(ledger), colour="blue"), 400, "invalid_request", "colour")
    assert_error(await get(ledger, finance(), end_time=JAN_10), 400, "invalid_request", "start_time")
    assert_error(
        await get(ledger, finance(), **params(ledger, bucket_width="1w")), 400, "invalid_request", "bucket_width"
    )
    assert_error(await get(ledger, finance(), **params(ledger, tz="Mars/Olympus")), 400, "invalid_request", "tz")
    assert_error(
        await get(ledger, finance(), **params(ledger, page="bm90IGEgY3Vyc29y")), 400, "invalid_request", "page"
    )
    assert_error(await get(ledger, finance(), **params(ledger, group_by="tag")), 400, "invalid_request", "tag_key")


async def test_a_page_of_buckets_with_exact_line_items(ledger: dict[str, Any]) -> None:
    a, b = ledger["a"].tenant_id, ledger["b"].tenant_id
    response = await get(ledger, finance(), **params(ledger, group_by="project_id,line_item"))
    page = response.json()
    assert (page["object"], page["has_more"], page["next_page"]) == ("page", False, None)
    assert [(d["object"], d["start_time"], d["end_time"]) for d in page["data"]] == [
        ("bucket", JAN_10 + i * DAY, JAN_10 + (i + 1) * DAY) for i in range(5)
    ]
    day1 = {(r["project_id"], r["line_item"]): r for r in page["data"][0]["results"]}
    day3 = {(r["project_id"], r["line_item"]): r["amount_micro_usd"] for r in page["data"][2]["results"]}
    assert {k: r["amount_micro_usd"] for k, r in day1.items()} == {
        (a, "gpt-realtime, input text"): 400,
        (a, "gpt-realtime, output text"): 48,
        (a, "gpt-realtime, output audio"): 64_000,
        (b, "whisper-1, transcription duration"): 1_000,
    }
    assert day3 == {
        (a, "gpt-realtime, input text"): 400,
        (a, "gpt-realtime, output text"): 48,
        (a, "gpt-realtime, output audio"): 64_001,
    }
    result = day1[(a, "gpt-realtime, output audio")]
    assert result["object"] == "organization.costs.result"
    assert result["amount"] == {"value": 0.064, "currency": "usd"}


async def test_csv_is_the_json_as_rows(ledger: dict[str, Any]) -> None:
    query = params(ledger, group_by="project_id,line_item,model", tz="America/St_Johns")
    page = (await get(ledger, finance(), **query)).json()
    response = await get(ledger, finance(), **query, format="csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"  # once (it was there twice)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = [
        (bucket["start_time"], r["project_id"], r["line_item"], r["model"], r["amount_micro_usd"])
        for bucket in page["data"]
        for r in bucket["results"]
    ]
    got = [
        (
            int(datetime.fromisoformat(row["bucket_start"]).timestamp()),
            row["project_id"],
            row["line_item"],
            row["model"],
            int(row["amount_micro_usd"]),
        )
        for row in rows
    ]
    assert got == expected and got
    for row in rows:
        assert Decimal(row["amount_usd"]) * 1_000_000 == int(row["amount_micro_usd"])
        assert row["bucket_start"].endswith("-03:30")


async def test_focus_export_has_the_focus_columns(ledger: dict[str, Any]) -> None:
    response = await get(ledger, finance(), **params(ledger, format="focus"))
    reader = csv.DictReader(io.StringIO(response.text))
    assert tuple(reader.fieldnames or ()) == FOCUS_COLUMNS
    rows = list(reader)
    a = ledger["a"]
    mine = [row for row in rows if row["SubAccountId"] == a.tenant_id]
    assert sum(Decimal(row["BilledCost"]) for row in mine) == Decimal("0.128897")
    audio = next(row for row in mine if row["SkuId"] == "gpt-realtime, output audio")
    assert (audio["ConsumedQuantity"], audio["ConsumedUnit"], audio["BillingCurrency"]) == ("1000", "Tokens", "USD")
    assert audio["SubAccountName"].startswith("costs-a")
    assert json.loads(audio["Tags"]) == {"team": "voice"}
    assert audio["ChargePeriodStart"] == "2026-01-10T00:00:00Z"
    assert audio["BilledCost"] == audio["EffectiveCost"] == audio["ListCost"] == "0.064000"


async def test_a_tenant_scoped_finance_token_sees_its_tenant_only(ledger: dict[str, Any]) -> None:
    a, b = ledger["a"].tenant_id, ledger["b"].tenant_id
    scoped = finance(tenant_id=a)
    page = (await get(ledger, scoped, start_time=JAN_10, end_time=JAN_10 + 5 * DAY, group_by="project_id")).json()
    assert {r["project_id"] for d in page["data"] for r in d["results"]} == {a}
    assert_error(await get(ledger, scoped, **params(ledger)), 404, "tenant_not_found", "project_ids")
    admin = {"authorization": f"Bearer {admin_token()}"}
    everyone = (await get(ledger, admin, start_time=JAN_10, end_time=JAN_10 + 5 * DAY, group_by="project_id")).json()
    assert {a, b} <= {r["project_id"] for d in everyone["data"] for r in d["results"]}


@pytest.mark.parametrize(
    ("zone", "width", "start", "expected_offset", "expected_length"),
    [
        ("America/St_Johns", "1d", datetime(2026, 1, 10, tzinfo=UTC), 3 * 3600 + 1800, DAY),  # UTC-3:30
        ("Asia/Kathmandu", "1d", datetime(2026, 1, 10, tzinfo=UTC), 18 * 3600 + 900, DAY),  # UTC+5:45
        ("Asia/Kathmandu", "1h", datetime(2026, 1, 10, tzinfo=UTC), 900, 3600),
        ("America/New_York", "1d", datetime(2026, 3, 8, 6, tzinfo=UTC), 5 * 3600, 23 * 3600),  # spring forward
        ("America/New_York", "1d", datetime(2026, 11, 1, 6, tzinfo=UTC), 4 * 3600, 25 * 3600),  # fall back
    ],
)
async def test_buckets_start_at_local_midnight_or_hour(
    ledger: dict[str, Any], zone: str, width: str, start: datetime, expected_offset: int, expected_length: int
) -> None:
    at = int(start.timestamp())
    page = (await get(ledger, finance(), start_time=at, end_time=at + 1, bucket_width=width, tz=zone)).json()
    [bucket] = page["data"]
    assert bucket["start_time"] % DAY % (3600 if width == "1h" else DAY) == expected_offset
    assert bucket["end_time"] - bucket["start_time"] == expected_length


async def test_cursor_pages_cover_every_bucket_once(ledger: dict[str, Any]) -> None:
    seen, query = [], params(ledger, limit=2, group_by="project_id")
    while True:
        page = (await get(ledger, finance(), **query)).json()
        seen += page["data"]
        assert len(page["data"]) <= 2
        if not page["has_more"]:
            assert page["next_page"] is None
            break
        query["page"] = page["next_page"]
    assert [d["start_time"] for d in seen] == [JAN_10 + i * DAY for i in range(5)]
    total = sum(r["amount_micro_usd"] for d in seen for r in d["results"])
    assert total == 64_448 + 64_449 + 1_000


@pytest.mark.parametrize("fmt", ["csv", "focus"])
async def test_the_cli_export_writes_the_api_rows(ledger: dict[str, Any], pg_dsn: str, fmt: str, tmp_path: Any) -> None:
    a, b = ledger["a"].tenant_id, ledger["b"].tenant_id
    out = tmp_path / "costs.csv"
    command = [
        sys.executable,
        "-c",
        "import sys; from gateway.cli import main; sys.exit(main())",
        "costs",
        "export",
        "--format",
        fmt,
        "--database-url",
        pg_dsn,
    ]
    command += ["--start", "2026-01-10T00:00:00Z", "--end", "2026-01-15T00:00:00Z", "--tenant", a, "--tenant", b]
    process = await asyncio.create_subprocess_exec(*command, "--output", str(out), stderr=asyncio.subprocess.PIPE)
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    response = await get(ledger, finance(), **params(ledger, format=fmt, group_by="project_id,line_item", limit=2))
    pages = [response.text]
    while "voxgate-next-page" in response.headers:
        query = params(
            ledger, format=fmt, group_by="project_id,line_item", limit=2, page=response.headers["voxgate-next-page"]
        )
        response = await get(ledger, finance(), **query)
        pages.append(response.text)
    api_rows = [pages[0].splitlines()[0]] + [line for page in pages for line in page.splitlines()[1:]]
    assert out.read_text().splitlines() == api_rows
    assert len(api_rows) > 4
