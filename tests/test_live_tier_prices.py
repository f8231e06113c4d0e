"""A price file's service-tier prices reach the ledger of a real GPT-Live session.

`client.live.connect()` through voxgate to the emulator, delegating to `gpt-5.5` on the flex
tier. The price file gives gpt-5.5 its own flex rates; the test prices the usage the emulator
reported at those rates itself and expects the ledger to agree to the micro-dollar, stamped
with the file's version. A second gateway without the flex override books the same usage at
the built-in multiple (half the standard rates), so the override is what changed the cost.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openai import AsyncOpenAI

from emulator import RealtimeEmulator
from emulator.audio import silence, tone
from gateway.settings import PricingSettings
from tests.conftest import REDIS_URL
from tests.support.harness import gateway_settings, make_tenant, start_emulator, start_gateway
from tests.support.waiting import until

pytestmark = pytest.mark.e2e

STANDARD = {"input": 1_250_000, "cached": 125_000, "output": 10_000_000}  # micro-USD per 1M tokens
FLEX = {"input": 400_000, "cached": 40_000, "output": 3_000_000}  # the file's own flex rates for gpt-5.5
BASE_FILE = (
    'version: "{version}"\nmodels:\n  gpt-5.5:\n    input: "1.25"\n    cached_input: "0.125"\n    output: "10.00"\n'
)
FLEX_FILE = (
    BASE_FILE
    + '    service_tiers:\n      flex:\n        input: "0.40"\n        cached_input: "0.04"\n        output: "3.00"\n'
)
SPEECH = base64.b64encode(tone(800) + silence(700)).decode()


def cost(usage: dict[str, Any], rates: dict[str, int], share: tuple[int, int] = (1, 1)) -> int:
    cached = usage["input_tokens_details"]["cached_tokens"]
    total = (usage["input_tokens"] - cached) * rates["input"] + cached * rates["cached"]
    total += usage["output_tokens"] * rates["output"]
    numerator, denominator = total * share[0], 1_000_000 * share[1]
    return (2 * numerator + denominator) // (2 * denominator)


@pytest.fixture(scope="module")
async def emu() -> AsyncIterator[RealtimeEmulator]:
    emulator = await start_emulator(live_usage_interval_s=1.0)
    yield emulator
    await emulator.stop()


async def flex_responses(base_url: str, secret: str) -> dict[str, dict[str, Any]]:
    """One Live session delegating on the flex tier; the terminal responses the client saw, by id."""
    client = AsyncOpenAI(base_url=base_url, api_key=secret)
    delegation: Any = {"type": "responses", "responses": {"model": "gpt-5.5", "service_tier": "flex"}}
    terminal: dict[str, dict[str, Any]] = {}
    try:
        async with client.live.connect() as connection:
            await connection.session.start(session={"model": "gpt-live-1", "delegation": delegation})
            await connection.session.input_audio.append(audio=SPEECH)
            async for event in connection:
                if event.type == "response.event" and event.event["type"] in (
                    "response.completed",
                    "response.incomplete",
                ):
                    response = event.event["response"]
                    terminal[response["id"]] = response
                    await connection.session.close()
                if event.type == "session.closed":
                    break
    finally:
        await client.close()
    return terminal


async def booked(pool: asyncpg.Pool, tenant_id: str, expected: int) -> list[asyncpg.Record]:
    async def rows() -> list[asyncpg.Record] | None:
        found = await pool.fetch(
            "SELECT t.usage_id, t.service_tier, t.cost_micro_usd, t.price_version FROM live_token_usage t "
            "JOIN realtime_sessions s ON s.id = t.session_id WHERE s.tenant_id = $1 AND t.kind = 'response'",
            tenant_id,
        )
        return found if len(found) >= expected else None

    return await until(rows)


@pytest.mark.parametrize(
    ("text", "version", "rates", "share"),
    [
        (FLEX_FILE, "tiers-test-1", FLEX, (1, 1)),  # the file's own flex rates
        (BASE_FILE, "tiers-test-0", STANDARD, (1, 2)),  # no override: the built-in flex multiple
    ],
)
async def test_a_price_files_tier_price_is_what_the_ledger_books(
    text: str,
    version: str,
    rates: dict[str, int],
    share: tuple[int, int],
    pg_dsn: str,
    emu: RealtimeEmulator,
    pg_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    price_file = tmp_path / "prices.yaml"
    price_file.write_text(text.format(version=version))
    settings = gateway_settings(pg_dsn, REDIS_URL, emu.base_url)
    settings = type(settings)(**{**settings.__dict__, "pricing": PricingSettings(price_file=price_file)})
    gw = await start_gateway(settings)
    try:
        tenant = await make_tenant(pg_pool)
        terminal = await flex_responses(gw.base_url, tenant.secret)
        assert terminal and all(r["service_tier"] == "flex" for r in terminal.values())
        rows = await booked(pg_pool, tenant.tenant_id, len(terminal))
    finally:
        await gw.stop()
    assert {r["usage_id"]: r["cost_micro_usd"] for r in rows} == {
        rid: cost(r["usage"], rates, share) for rid, r in terminal.items()
    }
    assert all(r["cost_micro_usd"] > 0 for r in rows)
    assert {(r["service_tier"], r["price_version"]) for r in rows} == {("flex", version)}
