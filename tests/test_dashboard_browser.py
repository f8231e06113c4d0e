"""The finance dashboard in headless Chromium: sign in, the page's totals equal the Costs API's to the
micro-dollar (in two zones), the CSV holds what is on screen, and the token never enters a URL."""

from __future__ import annotations

import csv
import importlib.util
import io
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from gateway.ledger.records import DurationRecord, LiveTokenRecord
from gateway.ledger.writer import LedgerWriter, SessionStarted
from gateway.settings import AdminSettings, LedgerSettings
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantDirectory
from policies.actions import UsageRecord
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, claims, hs256
from tests.support.budget_crossing import own_database
from tests.support.chromium import find_chromium
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway
from tests.test_browser_demo import unavailable

pytestmark = pytest.mark.e2e

KATHMANDU = "Asia/Kathmandu"  # +05:45: its month starts at a UTC quarter hour, not an hour


@dataclass
class Seeded:
    gateway: Gateway
    tenants: dict[str, str]  # name -> id


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system's chromium driven by Playwright; a skip without them (a failure on CI), as for the demo page."""
    path = find_chromium()
    if path is None or importlib.util.find_spec("playwright") is None:
        unavailable(
            "the dashboard test needs chromium and playwright: apt-get install chromium; pip install -e '.[dev]'"
        )
    return path


def usage(i: int, tenant: str, session: str, model: str, at: float, out_audio: int, in_text: int) -> UsageRecord:
    price = DEFAULT_PRICE_TABLE.models[model]
    cost = -(-(out_audio * price.audio_out + in_text * price.text_in) // 1_000_000)
    return UsageRecord(
        f"resp_dash{i}",
        session,
        tenant,
        model,
        "completed",
        at,
        in_text,
        out_audio,
        in_text + out_audio,
        in_text,
        0,
        0,
        0,
        0,
        0,
        0,
        out_audio,
        cost,
        DEFAULT_PRICE_TABLE.version_for(model),
    )


@pytest.fixture
async def seeded(emulator: Any) -> AsyncIterator[Seeded]:
    """A gateway over its own database: two tenants with budgets and a month of varied responses."""
    async with own_database() as dsn:
        settings = gateway_settings(dsn, REDIS_URL, emulator.base_url)
        settings = replace(
            settings, admin=AdminSettings(SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None)
        )
        gateway = await start_gateway(settings)  # registers the price rates the line items need
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        tenants = {name: (await make_tenant(pool, name)).tenant_id for name in ("support-bot", "sales-coach")}
        store = PolicyStore(pool, {}, None)
        await store.set(tenants["support-bot"], {"budget": {"monthly_usd": "2.50"}}, actor="test")
        await store.set(tenants["sales-coach"], {"budget": {"monthly_usd": "40"}}, actor="test")
        writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
        writer.start()
        now = time.time()
        n = 0
        for tenant in tenants.values():
            keys = [(await TenantDirectory(pool).create_key(tenant, f"app-{k}")).id for k in range(3)]
            for day in range(0, 40, 3):  # some before this month, some in it
                for j in range(3):
                    n += 1
                    at = now - day * 86_400 - 600 - j * 60
                    session = f"vgs_dash{n}"
                    model = "gpt-realtime" if j else "gpt-realtime-mini"
                    writer.submit(
                        SessionStarted(
                            session,
                            tenant,
                            keys[j],
                            "websocket",
                            "conversation",
                            model,
                            f"vg_user{j + n % 2}",
                            "t",
                            at,
                            tags=(("task", ("triage", "upsell", "summary")[j]),),
                        )
                    )
                    writer.submit(usage(n, tenant, session, model, at, 1_000 * (j + 1) + n, 500 + 7 * n))
            # GPT-Live spend this month: 90 s active and 30 s standby, and one delegated response.
            n += 1
            live, at = f"vgs_dash{n}", now - 900
            writer.submit(
                SessionStarted(
                    live,
                    tenant,
                    keys[0],
                    "websocket",
                    "conversation",
                    "gpt-live-1",
                    "vg_user0",
                    "t",
                    at,
                    tags=(("task", "triage"),),
                )
            )
            voice_version = DEFAULT_PRICE_TABLE.version_for("gpt-live-1")
            writer.submit(
                DurationRecord(
                    live,
                    "live_voice",
                    "90000:30000",
                    tenant,
                    "gpt-live-1",
                    at,
                    90_000,
                    30_000,
                    False,
                    85_000,
                    voice_version,
                )
            )
            writer.submit(
                LiveTokenRecord(
                    live,
                    "response",
                    f"resp_live{n}",
                    tenant,
                    "gpt-5.5",
                    None,
                    "completed",
                    at,
                    900,
                    0,
                    300,
                    11_700,
                    "x",
                )
            )
        assert await writer.drain(10)
        await writer.stop()
        await pool.close()
        try:
            yield Seeded(gateway, tenants)
        finally:
            await gateway.stop()


def month_start(zone: str) -> int:
    now = datetime.now(ZoneInfo(zone))
    return int(datetime(now.year, now.month, 1, tzinfo=ZoneInfo(zone)).timestamp())


async def api_costs(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/v1/organization/costs", params={"limit": 31, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body["has_more"]
    return [result for bucket in body["data"] for result in bucket["results"]]


def exact_usd(micro: int) -> str:
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}"


async def month_to_date(http: httpx.AsyncClient, zone: str) -> dict[str, str]:
    results = await api_costs(http, start_time=month_start(zone), bucket_width="1mo", tz=zone, group_by="project_id")
    totals: dict[str, int] = {}
    for r in results:
        totals[r["project_id"]] = totals.get(r["project_id"], 0) + r["amount_micro_usd"]
    return {tenant: exact_usd(micro) for tenant, micro in totals.items()}


LEDGER_SINCE = """
SELECT tenant_id, sum(cost_micro_usd)::bigint AS micro FROM (
    SELECT tenant_id, cost_micro_usd, occurred_at FROM usage_ledger
    UNION ALL SELECT tenant_id, cost_micro_usd, occurred_at FROM transcription_usage
    UNION ALL SELECT tenant_id, cost_micro_usd, occurred_at FROM duration_usage
    UNION ALL SELECT tenant_id, cost_micro_usd, occurred_at FROM live_token_usage
) AS spend WHERE occurred_at >= to_timestamp($1) GROUP BY tenant_id
"""


async def ledger_month_to_date(pool: asyncpg.Pool, since: int) -> dict[str, str]:
    return {row["tenant_id"]: exact_usd(row["micro"]) for row in await pool.fetch(LEDGER_SINCE, since)}


async def page_totals(page: Any) -> dict[str, str]:
    rows = await page.eval_on_selector_all(
        "#totals tbody tr", "rows => rows.map(r => [r.dataset.tenant, r.querySelector('.cost').textContent])"
    )
    return {tenant: text for tenant, text in rows if text != "0.000000"}


async def loaded(page: Any, loads: int) -> dict[str, Any]:
    await page.wait_for_function(
        f"() => window.voxgateDashboard.status === 'error' || window.voxgateDashboard.loads >= {loads}", timeout=20_000
    )
    view: dict[str, Any] = await page.evaluate("() => JSON.parse(JSON.stringify(window.voxgateDashboard))")
    assert view["status"] == "ready", view["error"]
    return view


async def test_the_dashboard_shows_the_costs_apis_numbers_and_keeps_the_token_out_of_urls(
    chromium: str, seeded: Seeded, tmp_path: Any
) -> None:
    from playwright.async_api import async_playwright

    token = hs256(claims(sub="fin-" + secrets.token_hex(3), roles=["finance"]))
    base = seeded.gateway.server.http_url
    urls: list[str] = []
    console: list[str] = []
    async with (
        httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {token}"}) as http,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        page = await browser.new_page(accept_downloads=True)
        page.on("request", lambda request: urls.append(request.url))
        page.on("console", lambda message: console.append(message.text))
        try:
            first = await page.goto(f"{base}/dashboard")
            assert first is not None and first.status == 200
            csp = first.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "form-action 'none'" in csp
            assert first.headers["content-type"] == "text/html; charset=utf-8"  # once (it was there twice)

            await page.fill("#token", token)
            await page.click("#signin-submit")
            view = await loaded(page, 1)
            assert await page.input_value("#token") == ""  # the field does not keep it

            # Month to date, UTC: the page's table equals the API, and the API equals the ledger
            # (its four tables, Live time and delegated tokens included, summed here).
            expected = await month_to_date(http, "UTC")
            assert len(expected) == 2
            assert expected == await ledger_month_to_date(seeded.gateway.services.pool, month_start("UTC"))
            assert await page_totals(page) == expected
            assert [t["monthly_budget_micro_usd"] for t in view["tenants"]] == [2_500_000, 40_000_000]

            # The selected tenant's daily chart and top lists are the API's numbers too.
            tenant = view["selected"]
            daily = await api_costs(
                http,
                start_time=view["chartStart"],
                bucket_width="1d",
                tz="UTC",
                project_ids=tenant,
                group_by="line_item",
            )
            assert sum(p["amount_micro_usd"] for d in view["daily"] for p in d["parts"]) == sum(
                r["amount_micro_usd"] for r in daily
            )
            keys = await api_costs(
                http, start_time=month_start("UTC"), bucket_width="1mo", project_ids=tenant, group_by="api_key_id"
            )
            assert {e["id"]: e["amount_micro_usd"] for e in view["tops"]["api_key_id"]} == {
                r["api_key_id"]: r["amount_micro_usd"] for r in keys
            }
            tags = await api_costs(
                http,
                start_time=month_start("UTC"),
                bucket_width="1mo",
                project_ids=tenant,
                group_by="tag",
                tag_key="task",
            )
            assert {e["id"]: e["amount_micro_usd"] for e in view["tops"]["tag"]} == {
                r["tag"]: r["amount_micro_usd"] for r in tags
            }
            assert len(tags) == 3

            # Another zone: the month starts at Kathmandu's midnight, and the page still equals the API.
            await page.select_option("#zone", KATHMANDU)
            view = await loaded(page, 2)
            assert view["monthStart"] == month_start(KATHMANDU)
            assert await page_totals(page) == await month_to_date(http, KATHMANDU)

            # The CSV holds what is on screen.
            async with page.expect_download() as info:
                await page.click("#csv")
            download = await info.value
            rows = list(csv.DictReader(io.StringIO((await download.path()).read_text())))
            on_screen = await page_totals(page)
            assert {r["project_id"]: r["amount_usd"] for r in rows if r["section"] == "month_to_date"} == {
                t["project_id"]: exact_usd(t["cost_micro_usd"]) for t in view["tenants"]
            }
            assert {r["project_id"]: r["amount_usd"] for r in rows if r["section"] == "month_to_date"}.items() >= (
                on_screen.items()
            )
            assert all(r["tz"] == KATHMANDU for r in rows)
            assert sum(int(r["amount_micro_usd"]) for r in rows if r["section"] == "daily") == sum(
                p["amount_micro_usd"] for d in view["daily"] for p in d["parts"]
            )
            assert {r["value"] for r in rows if r["section"] == "top_api_key_id"} == {
                e["id"] for e in view["tops"]["api_key_id"]
            }
        finally:
            await browser.close()
    assert urls and all(token not in url for url in urls)
    assert any("tz=Asia%2FKathmandu" in url for url in urls)
    assert not [line for line in console if "Content Security Policy" in line]
