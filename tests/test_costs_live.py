"""GPT-Live and translation spend in every cost view (migrations/0015_cost_rollups_live.sql).

Time-billed rows (`duration_usage`: a Live session's voice time, a translation's audio) and a Live
session's delegated tokens (`live_token_usage`) are rolled up with the realtime ledger: the
Costs API's JSON, CSV and FOCUS, groupings by key, end user and tag, zones at :30 and :45, the
rows written before the migration (added once), and `voxgate costs reconcile`. Every expected
amount below is worked out by hand from the built-in prices, in the comments.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.finance.rates import register_price_rates
from gateway.ledger.records import LedgerRecord
from gateway.settings import AdminSettings
from gateway.storage.migrations import apply_migrations, default_migrations_dir
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import DurationPrice, TokenPrice
from policies.prices.table import CEILING_KEY
from tests.conftest import REDIS_URL, create_database, drop_database
from tests.support import ledger_fill
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, claims, hs256
from tests.support.gateway_process import VOXGATE
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway

DAY = 86400
FEB_2 = int(datetime(2026, 2, 2, tzinfo=UTC).timestamp())
VOICE_VERSION = DEFAULT_PRICE_TABLE.version_for("gpt-live-1")
CEILING_VERSION = DEFAULT_PRICE_TABLE.version_for(CEILING_KEY)
LIVE_MIGRATION = "0015_cost_rollups_live.sql"

# The prices the amounts below are worked out from: gpt-live-1 $0.05 / min active, $0.02 / min
# standby; gpt-realtime-translate $0.034 / min; a Responses model voxgate has no price for
# (gpt-5.5) at the ceiling: $5 input, $2.50 cached input, $24 output per 1M tokens.
PRICES = {
    "gpt-live-1": DurationPrice(per_minute=50_000, standby_per_minute=20_000),
    "gpt-realtime-translate": DurationPrice(per_minute=34_000),
}
CEILING_TOKENS = TokenPrice(text_in=5_000_000, cached_text_in=2_500_000, text_out=24_000_000)

# Line item -> (micro-USD, quantity) on Feb 2 (UTC):
EXPECTED = {
    # 01:00 books 60 s active (50,000); 01:20 books the session up to 120 s active + 60 s standby
    # (120,000 in all), at the increase: 60 s active (50,000) and 60 s standby (20,000).
    "gpt-live-1, session active seconds": (100_000, 120_000),
    "gpt-live-1, session standby seconds": (20_000, 60_000),
    # 04:00: 30 s of appended audio at $0.034 / min.
    "gpt-realtime-translate, audio seconds": (17_000, 30_000),
    # 01:30: 2,000 input tokens of which 1,000 cached, 1,000 output: 5,000 + 2,500 + 24,000 = 31,500
    # at the rates; booked at 31,501, the extra micro-USD goes to the largest remainder (output).
    "gpt-5.5, input": (5_000, 1_000),
    "gpt-5.5, cached input": (2_500, 1_000),
    "gpt-5.5, output": (24_001, 1_000),
}
TOTAL = 100_000 + 20_000 + 17_000 + 31_501


def live_records(tenant: str, key: str | None, session: str = "vgs_live1") -> list[LedgerRecord]:
    voice = "live_voice"
    return [
        ledger_fill.session(session, tenant, key, "eu_live", (("team", "live"),), FEB_2),
        ledger_fill.duration(session, tenant, voice, "gpt-live-1", FEB_2 + 3600, 60_000, 0, 50_000, VOICE_VERSION),
        ledger_fill.duration(
            session, tenant, voice, "gpt-live-1", FEB_2 + 4800, 120_000, 60_000, 70_000, VOICE_VERSION
        ),
        ledger_fill.duration(
            session,
            tenant,
            "translation",
            "gpt-realtime-translate",
            FEB_2 + 4 * 3600,
            30_000,
            0,
            17_000,
            DEFAULT_PRICE_TABLE.version_for("gpt-realtime-translate"),
        ),
        ledger_fill.live_tokens(
            session, tenant, "resp_live1", "gpt-5.5", FEB_2 + 5400, (2_000, 1_000, 1_000), 31_501, CEILING_VERSION
        ),
    ]


def test_the_hand_worked_prices_are_the_built_in_ones() -> None:
    for model, price in PRICES.items():
        assert DEFAULT_PRICE_TABLE.duration_price_for(model)[0] == price
    assert DEFAULT_PRICE_TABLE.responses_price_for("gpt-5.5") == (CEILING_TOKENS, CEILING_KEY)


@pytest.fixture(scope="module")
async def live_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER))
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


@pytest.fixture(scope="module")
async def live_ledger(live_gateway: Gateway) -> dict[str, Any]:
    """One tenant's Live, translation and delegated spend, written twice (a replay adds nothing)."""
    pool = live_gateway.services.pool
    tenant = await make_tenant(pool, "costs-live")
    records = live_records(tenant.tenant_id, tenant.key_id)
    await ledger_fill.write(pool, records)
    await ledger_fill.write(pool, records)
    return {"tenant": tenant, "base": f"{live_gateway.server.http_url}/v1/organization/costs"}


async def costs(ledger: dict[str, Any], **query: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {hs256(claims(roles=['finance']))}"}
    params = {"start_time": FEB_2, "end_time": FEB_2 + DAY, "project_ids": ledger["tenant"].tenant_id, **query}
    async with httpx.AsyncClient() as http:
        response = await http.get(ledger["base"], params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_live_line_items_are_exact(live_ledger: dict[str, Any]) -> None:
    page = (await costs(live_ledger, group_by="project_id,line_item")).json()
    [bucket] = page["data"]
    tenant = live_ledger["tenant"].tenant_id
    assert {r["project_id"] for r in bucket["results"]} == {tenant}
    assert {r["line_item"]: r["amount_micro_usd"] for r in bucket["results"]} == {
        item: amount for item, (amount, _) in EXPECTED.items()
    }
    by_model = (await costs(live_ledger, group_by="model")).json()["data"][0]["results"]
    assert {r["model"]: r["amount_micro_usd"] for r in by_model} == {
        "gpt-live-1": 120_000,
        "gpt-realtime-translate": 17_000,
        "gpt-5.5": 31_501,
    }


async def test_live_rows_group_by_key_end_user_and_tag(live_ledger: dict[str, Any]) -> None:
    tenant = live_ledger["tenant"]
    page = (await costs(live_ledger, group_by="api_key_id,end_user,tag", tag_key="team")).json()
    [result] = page["data"][0]["results"]
    assert (result["api_key_id"], result["end_user"], result["tag"]) == (tenant.key_id, "eu_live", "team=live")
    assert result["amount_micro_usd"] == TOTAL
    filtered = (await costs(live_ledger, api_key_ids=tenant.key_id, models="gpt-live-1")).json()
    assert [r["amount_micro_usd"] for r in filtered["data"][0]["results"]] == [120_000]


@pytest.mark.parametrize(
    ("zone", "days"),
    [
        # St John's days start at 03:30 UTC: the 01:00-01:30 spend is Feb 1's, the 04:00 audio Feb 2's.
        ("America/St_Johns", [TOTAL - 17_000, 17_000]),
        # Kathmandu days start at 18:15 UTC: all of it is Feb 2's (and none of Feb 3, which
        # starts within the range).
        ("Asia/Kathmandu", [TOTAL, 0]),
    ],
)
async def test_live_spend_in_zones_at_30_and_45_minutes(
    live_ledger: dict[str, Any], zone: str, days: list[int]
) -> None:
    for groups in ("project_id,line_item", "project_id,api_key_id"):  # the hourly and the 15-minute rollup
        page = (await costs(live_ledger, group_by=groups, tz=zone)).json()
        amounts = [sum(r["amount_micro_usd"] for r in bucket["results"]) for bucket in page["data"]]
        assert amounts == days


async def test_csv_is_the_json_for_live_rows(live_ledger: dict[str, Any]) -> None:
    query = {"group_by": "project_id,line_item,model", "tz": "America/St_Johns"}
    page = (await costs(live_ledger, **query)).json()
    rows = list(csv.DictReader(io.StringIO((await costs(live_ledger, **query, format="csv")).text)))
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
    assert got == expected
    assert {line for _, _, line, _, _ in got} == set(EXPECTED)
    for row in rows:
        assert Decimal(row["amount_usd"]) * 1_000_000 == int(row["amount_micro_usd"])


async def test_focus_counts_durations_in_seconds_and_tokens_in_tokens(live_ledger: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO((await costs(live_ledger, format="focus")).text)))
    by_sku = {row["SkuId"]: row for row in rows}
    assert set(by_sku) == set(EXPECTED)
    active = by_sku["gpt-live-1, session active seconds"]
    assert (active["ConsumedQuantity"], active["ConsumedUnit"], active["BilledCost"]) == (
        "120.000",
        "Seconds",
        "0.100000",
    )
    assert (active["PricingQuantity"], active["PricingUnit"]) == ("120.000", "Seconds")
    assert json.loads(active["Tags"]) == {"team": "live"}
    audio = by_sku["gpt-realtime-translate, audio seconds"]
    assert (audio["ConsumedQuantity"], audio["ConsumedUnit"]) == ("30.000", "Seconds")
    output = by_sku["gpt-5.5, output"]
    assert (output["ConsumedQuantity"], output["ConsumedUnit"], output["BilledCost"]) == ("1000", "Tokens", "0.024001")
    assert sum(Decimal(row["BilledCost"]) for row in rows) * 1_000_000 == TOTAL


async def test_voice_seconds_are_the_sessions_final_time_whatever_the_booking_order(live_gateway: Gateway) -> None:
    """A session's bookings are cumulative: its seconds in the Costs API are its largest booking's,
    whether the bookings arrive out of order or are committed by two transactions in parallel."""
    pool = live_gateway.services.pool
    tenant = await make_tenant(pool, "costs-live-order")
    t, key, voice = tenant.tenant_id, tenant.key_id, "live_voice"

    def booking(session: str, at: int, active: int, standby: int, cost: int) -> LedgerRecord:
        return ledger_fill.duration(session, t, voice, "gpt-live-1", at, active, standby, cost, VOICE_VERSION)

    early = {s: booking(s, FEB_2 + 3600, 60_000, 0, 50_000) for s in ("vgs_late", "vgs_par")}
    later = {s: booking(s, FEB_2 + 4800, 120_000, 60_000, 70_000) for s in ("vgs_late", "vgs_par")}
    await ledger_fill.write(pool, [ledger_fill.session(s, t, key, None, (), FEB_2) for s in ("vgs_late", "vgs_par")])

    # Out of order: the 120 s + 60 s booking first, then the 60 s one it already includes.
    await ledger_fill.write(pool, [later["vgs_late"]])
    await ledger_fill.write(pool, [early["vgs_late"]])

    # In parallel: the second transaction books while the first has not committed.
    async def book(conn: asyncpg.Connection, record: LedgerRecord) -> None:
        for query, args in ledger_fill.statements(record):
            await conn.execute(query, *args)

    async with pool.acquire() as first, pool.acquire() as second:
        first_tx, second_tx = first.transaction(), second.transaction()
        await first_tx.start()
        await book(first, early["vgs_par"])
        await second_tx.start()
        pending = asyncio.ensure_future(book(second, later["vgs_par"]))
        await asyncio.wait([pending], timeout=1.0)  # done at once unless it waits for the first
        await first_tx.commit()
        await pending
        await second_tx.commit()

    ledger = {"tenant": tenant, "base": f"{live_gateway.server.http_url}/v1/organization/costs"}
    rows = list(csv.DictReader(io.StringIO((await costs(ledger, format="focus")).text)))
    by_sku = {row["SkuId"]: row for row in rows}
    assert set(by_sku) == {"gpt-live-1, session active seconds", "gpt-live-1, session standby seconds"}
    # Each session: 120 s active and 60 s standby in all, so 240 s and 120 s for the two.
    active, standby = by_sku["gpt-live-1, session active seconds"], by_sku["gpt-live-1, session standby seconds"]
    assert (active["ConsumedQuantity"], standby["ConsumedQuantity"]) == ("240.000", "120.000")
    # Amounts are the bookings' own. In order (vgs_par): 50,000, then 70,000 split 60 s x $0.05 :
    # 60 s x $0.02 = 50,000 + 20,000. Out of order (vgs_late): 70,000 split 120 s x $0.05 : 60 s x $0.02
    # (6,000 : 1,200) = 58,333.3 + 11,666.7 -> 58,333 + 11,667 (the larger remainder), then 50,000 for a
    # booking adding no time, split by its own 60 s active: all active.
    assert (Decimal(active["BilledCost"]), Decimal(standby["BilledCost"])) == (
        Decimal("0.208333"),
        Decimal("0.031667"),
    )
    quantities = await pool.fetch(
        "SELECT line_item, sum(quantity)::bigint AS q FROM cost_rollup_15m WHERE tenant_id = $1 GROUP BY 1", t
    )
    assert {r["line_item"]: r["q"] for r in quantities} == {
        "gpt-live-1, session active seconds": 240_000,
        "gpt-live-1, session standby seconds": 120_000,
    }


# --- the rows written before the migration --------------------------------------------------

ROLLUPS = ("cost_rollup_15m", "cost_rollup_15m_slim", "cost_rollup_1h", "cost_rollup_1d")
ROLLUP_TOTALS = "SELECT " + ", ".join(f"(SELECT coalesce(sum(amount_micro_usd), 0) FROM {t})::bigint" for t in ROLLUPS)
LINES_15M = "SELECT line_item, sum(amount_micro_usd)::bigint AS amount FROM cost_rollup_15m GROUP BY 1"


async def test_rows_written_before_the_migration_are_rolled_up_once(tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for path in default_migrations_dir().glob("*.sql"):
        if path.name < LIVE_MIGRATION:  # up to 0014: no Live triggers, no slim rollup
            shutil.copy(path, before / path.name)
    name, dsn = await create_database()
    try:
        assert LIVE_MIGRATION not in await apply_migrations(dsn, before)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            tenant = await make_tenant(pool, "costs-backfill")
            await ledger_fill.write(pool, live_records(tenant.tenant_id, tenant.key_id))
            assert await pool.fetchval("SELECT count(*) FROM cost_rollup_15m") == 0  # no trigger yet

            assert LIVE_MIGRATION in await apply_migrations(dsn)  # and any later file
            assert tuple(await pool.fetchrow(ROLLUP_TOTALS)) == (TOTAL,) * 4
            # No rates were registered when it ran: the 01:20 booking (active and standby time)
            # is one '<model>, session seconds' line and the delegated response one '<model>, tokens'.
            lines = {row["line_item"]: row["amount"] for row in await pool.fetch(LINES_15M)}
            assert lines == {
                "gpt-live-1, session active seconds": 50_000,
                "gpt-live-1, session seconds": 70_000,
                "gpt-realtime-translate, audio seconds": 17_000,
                "gpt-5.5, tokens": 31_501,
            }
            # Quantities: the session's final 120 s + 60 s, as 60 s active then the 120 s increase.
            voice_q = await pool.fetchval(
                "SELECT sum(quantity)::bigint FROM cost_rollup_15m WHERE model = 'gpt-live-1'"
            )
            assert voice_q == 180_000

            assert await apply_migrations(dsn) == []  # a second run adds nothing
            await ledger_fill.write(pool, live_records(tenant.tenant_id, tenant.key_id))  # nor does a replay
            assert tuple(await pool.fetchrow(ROLLUP_TOTALS)) == (TOTAL,) * 4

            # Rows written after it reach the rollups through the triggers, split by the registered rates.
            await register_price_rates(pool, DEFAULT_PRICE_TABLE)
            await ledger_fill.write(pool, live_records(tenant.tenant_id, tenant.key_id, session="vgs_live2"))
            assert tuple(await pool.fetchrow(ROLLUP_TOTALS)) == (2 * TOTAL,) * 4
            lines = {row["line_item"]: row["amount"] for row in await pool.fetch(LINES_15M)}
            assert lines["gpt-live-1, session standby seconds"] == 20_000
            assert lines["gpt-5.5, output"] == 24_001
        finally:
            await pool.close()
    finally:
        await drop_database(name)


# --- reconciliation -------------------------------------------------------------------------


def openai_export(path: Path, amounts: dict[str, int]) -> Path:
    """One page of OpenAI's Costs API for Feb 2 (UTC), grouped by project and line item."""
    results = [
        {
            "object": "organization.costs.result",
            "amount": {"value": micro / 1_000_000, "currency": "usd"},
            "line_item": line_item,
            "project_id": "proj_Live1",
        }
        for line_item, micro in amounts.items()
    ]
    bucket = {"object": "bucket", "start_time": FEB_2, "end_time": FEB_2 + DAY, "results": results}
    path.write_text(json.dumps({"object": "page", "data": [bucket], "has_more": False, "next_page": None}))
    return path


def reconcile(dsn: str, export: Path) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [str(VOXGATE), "costs", "reconcile", "--json", "--openai-costs", str(export)],
        env={**os.environ, "VOXGATE_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


@pytest.mark.e2e
async def test_reconcile_sees_live_spend(tmp_path: Path) -> None:
    name, dsn = await create_database()
    try:
        await apply_migrations(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            await register_price_rates(pool, DEFAULT_PRICE_TABLE)
            tenant = await make_tenant(pool, "costs-live-reconcile")
            await ledger_fill.write(pool, live_records(tenant.tenant_id, tenant.key_id))
        finally:
            await pool.close()
        matching = {item: amount for item, (amount, _) in EXPECTED.items()}
        code, report, stderr = reconcile(dsn, openai_export(tmp_path / "matching.json", matching))
        assert code == 0, stderr
        assert {r["line_item"]: r["voxgate_micro_usd"] for r in report["rows"]} == matching

        # An export that bills the standby time at the active rate: voxgate's side shows its own.
        wrong = {**matching, "gpt-live-1, session standby seconds": 50_000}
        code, report, stderr = reconcile(dsn, openai_export(tmp_path / "wrong.json", wrong))
        assert code == 3, stderr
        [bad] = [r for r in report["rows"] if not r["within_tolerance"]]
        assert (bad["line_item"], bad["openai_micro_usd"], bad["voxgate_micro_usd"]) == (
            "gpt-live-1, session standby seconds",
            50_000,
            20_000,
        )
    finally:
        await drop_database(name)
