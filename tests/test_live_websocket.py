"""GPT-Live over WebSocket through voxgate: the real `openai` SDK's `client.live.connect()` with only
`base_url` changed, to the emulator, on real Postgres and Redis.

Expected costs are computed here from the figures the emulator reported and the prices written
below, never from voxgate's code: $0.05/min of session time (50,000 micro-USD a minute) and a
delegated `gpt-5.5` at $1.25 / $0.125 / $10.00 per 1M input / cached input / output tokens, at
half price on the flex tier. Usage is reported every second (`live_usage_interval_s`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emulator import RealtimeEmulator
from emulator.audio import silence, tone
from gateway.session.live_settings import LiveSettings, use_live_settings
from gateway.settings import PricingSettings
from policies.live.governor import LiveLimitsConfig
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, make_tenant, start_emulator, start_gateway

pytestmark = pytest.mark.e2e

USAGE_INTERVAL_S = 1.0
RESERVE_AHEAD_S = 2.0
VOICE_PER_MINUTE = 50_000  # micro-USD, gpt-live-1
BACKEND = {"input": 1_250_000, "cached": 125_000, "output": 10_000_000}  # micro-USD per 1M tokens, gpt-5.5
PRICE_FILE = (
    'version: "live-test-1"\nmodels:\n  gpt-5.5:\n    input: "1.25"\n    cached_input: "0.125"\n    output: "10.00"\n'
)
SPEECH = base64.b64encode(tone(800) + silence(700)).decode()


def half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def voice_cost(seconds: float) -> int:
    return half_up(round(seconds * 1000) * VOICE_PER_MINUTE, 60_000)


def backend_cost(usage: dict[str, Any], tier: str) -> int:
    cached = usage["input_tokens_details"]["cached_tokens"]
    total = (
        (usage["input_tokens"] - cached) * BACKEND["input"]
        + cached * BACKEND["cached"]
        + usage["output_tokens"] * BACKEND["output"]
    )
    share = {"flex": (1, 2), "default": (1, 1)}[tier]
    return half_up(total * share[0], 1_000_000 * share[1])


@pytest.fixture(scope="module")
async def emu() -> AsyncIterator[RealtimeEmulator]:
    emulator = await start_emulator(live_usage_interval_s=USAGE_INTERVAL_S)
    yield emulator
    await emulator.stop()


@pytest.fixture(scope="module")
async def gw(pg_dsn: str, emu: RealtimeEmulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    price_file = Path(tmp_path_factory.mktemp("prices")) / "prices.yaml"
    price_file.write_text(PRICE_FILE)
    settings = gateway_settings(pg_dsn, REDIS_URL, emu.base_url)
    settings = type(settings)(**{**settings.__dict__, "pricing": PricingSettings(price_file=price_file)})
    gateway = await start_gateway(settings)
    use_live_settings(gateway.app, LiveSettings(LiveLimitsConfig(reserve_ahead_s=RESERVE_AHEAD_S, close_wait_s=2.0)))
    yield gateway
    await gateway.stop()


async def set_policy(pool: asyncpg.Pool, tenant: TenantKey, document: dict[str, Any]) -> None:
    from gateway.storage.policy_store import PolicyStore

    await PolicyStore(pool, {}, None).set(tenant.tenant_id, document, actor="test")


async def next_of(
    connection: Any, kind: str, seen: list[tuple[float, Any]] | None = None, timeout: float = 10.0
) -> Any:
    async with asyncio.timeout(timeout):
        async for event in connection:
            if seen is not None:
                seen.append((time.monotonic(), event))
            if event.type == kind:
                return event
    raise AssertionError(f"the connection ended before {kind}")


async def live_row(pool: asyncpg.Pool, tenant: TenantKey) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT id, cost_micro_usd, end_reason FROM realtime_sessions WHERE tenant_id = $1 AND intent = 'live'",
        tenant.tenant_id,
    )


async def booked(pool: asyncpg.Pool, session_id: str) -> tuple[int, int, list[bool]]:
    voice = await pool.fetch("SELECT cost_micro_usd, estimated FROM duration_usage WHERE session_id = $1", session_id)
    tokens = await pool.fetchval(
        "SELECT coalesce(sum(cost_micro_usd), 0)::bigint FROM live_token_usage WHERE session_id = $1", session_id
    )
    return sum(r["cost_micro_usd"] for r in voice), tokens, [r["estimated"] for r in voice]


async def test_a_live_sessions_ledger_cost_equals_the_emulators_usage(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool)
    client = AsyncOpenAI(base_url=gw.base_url, api_key=tenant.secret)
    delegation: Any = {"type": "responses", "responses": {"model": "gpt-5.5", "service_tier": "flex"}}
    seen: list[tuple[float, Any]] = []
    async with client.live.connect() as connection:
        await connection.session.start(session={"model": "gpt-live-1", "delegation": delegation})
        await next_of(connection, "session.started", seen)
        await connection.session.input_audio.append(audio=SPEECH)
        while True:
            event = await next_of(connection, "response.event", seen)
            if event.event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                break
        await next_of(connection, "session.usage.updated", seen)
        await connection.session.close()
        closed = await next_of(connection, "session.closed", seen)
    await client.close()
    await gw.settle()
    terminal = {
        e.event["response"]["id"]: e.event["response"]
        for _, e in seen
        if e.type == "response.event" and e.event["type"] in ("response.completed", "response.incomplete")
    }
    assert terminal, "the emulator delegated no response"
    expected_voice = voice_cost(closed.usage.seconds)
    expected_tokens = sum(backend_cost(r["usage"], r["service_tier"]) for r in terminal.values())
    row = await live_row(pg_pool, tenant)
    voice, tokens, estimated = await booked(pg_pool, row["id"])
    assert (voice, tokens) == (expected_voice, expected_tokens)
    assert not any(estimated)
    assert row["cost_micro_usd"] == expected_voice + expected_tokens
    versions = await pg_pool.fetch("SELECT price_version FROM live_token_usage WHERE session_id = $1", row["id"])
    assert {v["price_version"] for v in versions} == {"live-test-1"}  # the price file's version


async def test_session_start_and_update_are_clamped_before_they_reach_upstream(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool)
    await set_policy(pg_pool, tenant, {"models": ["gpt-live-1", "gpt-5.5"], "max_output_tokens": 40})
    client = AsyncOpenAI(base_url=gw.base_url, api_key=tenant.secret)
    responses = {"model": "gpt-5.5", "max_output_tokens": 4096, "service_tier": "priority"}
    async with client.live.connect() as connection:
        start: Any = {"model": "gpt-live-1", "delegation": {"type": "responses", "responses": responses}}
        await connection.session.start(session=start)
        started = await next_of(connection, "session.started")
        await connection.session.update(
            session={"delegation": {"type": "responses", "responses": {"max_output_tokens": 9999}}}
        )
        updated = await next_of(connection, "session.updated")
        await connection.session.close()
        await next_of(connection, "session.closed")
    await client.close()
    upstream = emu.live.find(started.session.id)
    assert upstream is not None
    starts = [e for e in upstream.protocol.client_events if e["type"] == "session.start"]
    assert starts[0]["session"]["delegation"]["responses"] == {
        "model": "gpt-5.5",
        "max_output_tokens": 40,
        "service_tier": "default",
    }
    updates = [e for e in upstream.protocol.client_events if e["type"] == "session.update"]
    assert updates[0]["session"]["delegation"]["responses"] == {"max_output_tokens": 40}
    assert updated.session.delegation.responses.max_output_tokens == 40


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"model": "gpt-live-1.1"}, "model_not_allowed", "session.model"),
        (
            {"model": "gpt-live-1", "audio": {"output": {"voice": "ash"}}},
            "voice_not_allowed",
            "session.audio.output.voice",
        ),
        (
            {
                "model": "gpt-live-1",
                "delegation": {
                    "type": "responses",
                    "responses": {"model": "gpt-5.5", "tools": [{"type": "web_search"}]},
                },
            },
            "tool_not_allowed",
            "session.delegation.responses.tools[0]",
        ),
    ],
)
async def test_a_disallowed_start_gets_an_openai_shaped_error_and_nothing_reaches_upstream(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool, session: dict[str, Any], code: str, param: str
) -> None:
    tenant = await make_tenant(pg_pool)
    await set_policy(pg_pool, tenant, {"models": ["gpt-live-1", "gpt-5.5"], "voices": ["marin"]})
    sessions_before = len(emu.live.sessions)
    async with websockets.connect(
        f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions",
        additional_headers={"Authorization": f"Bearer {tenant.secret}"},
    ) as ws:
        await ws.send(json.dumps({"type": "session.start", "event_id": "evt_1", "session": session}))
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert error["type"] == "error" and error["client_event_id"] == "evt_1"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert ws.close_code == 4010
    # Upstream's socket was opened before the upgrade, but it never saw a session.start.
    assert not [e for s in emu.live.sessions[sessions_before:] for e in s.protocol.client_events]


async def test_a_query_is_refused_before_the_upgrade(gw: Gateway, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(
            f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions?model=gpt-live-1",
            additional_headers={"Authorization": f"Bearer {tenant.secret}"},
        )
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["error"]["code"] == "unknown_parameter"


async def test_a_budget_cut_closes_the_session_within_one_usage_interval(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    budget = 4_000  # micro-USD: 4.8 s of session time
    tenant = await make_tenant(pg_pool)
    await set_policy(pg_pool, tenant, {"budget": {"daily_usd": "0.004"}})
    client = AsyncOpenAI(base_url=gw.base_url, api_key=tenant.secret)
    seen: list[tuple[float, Any]] = []
    async with client.live.connect() as connection:
        await connection.session.start(session={"model": "gpt-live-1"})
        await next_of(connection, "session.started", seen)
        with pytest.raises((ConnectionClosed, AssertionError)):
            await next_of(connection, "never", seen, timeout=15.0)
        closed_at = time.monotonic()
        close_code = connection._connection.close_code
    await client.close()
    # The window reserved ahead no longer fits once the reported cost plus the window passes the
    # budget: from that report, the session must be gone within one usage interval plus 1 s.
    window = half_up(int(RESERVE_AHEAD_S * 1000) * VOICE_PER_MINUTE, 60_000)
    reports = [(t, e) for t, e in seen if e.type == "session.usage.updated"]
    over = next(t for t, e in reports if voice_cost(e.usage.seconds) + window > budget)
    assert closed_at - over <= USAGE_INTERVAL_S + 1.0
    errors = [e for _, e in seen if e.type == "error"]
    assert errors and errors[0].error.code == "budget_exhausted"
    assert close_code == 4003
    final = next(e for _, e in seen if e.type == "session.closed")
    await gw.settle()
    row = await live_row(pg_pool, tenant)
    voice, _, estimated = await booked(pg_pool, row["id"])
    assert voice == voice_cost(final.usage.seconds) <= budget and not any(estimated)
    assert row["end_reason"] == "budget_exhausted"


async def test_a_client_that_vanishes_still_has_its_session_booked(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool)
    ws = await websockets.connect(
        f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions",
        additional_headers={"Authorization": f"Bearer {tenant.secret}"},
    )
    await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
    started = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert started["type"] == "session.started"
    while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "session.usage.updated":
        pass
    await asyncio.sleep(1.2)
    ws.transport.abort()  # no close frame: the client is simply gone
    deadline = time.monotonic() + 10
    row = await live_row(pg_pool, tenant)
    while time.monotonic() < deadline:
        await gw.settle()
        row = await live_row(pg_pool, tenant)
        if row is not None and row["end_reason"] is not None:
            break
        await asyncio.sleep(0.1)
    upstream = emu.live.find(started["session"]["id"])
    assert upstream is not None and upstream.primary is not None
    closed = [e for e in upstream.primary.server_events if e["type"] == "session.closed"]
    voice, _, estimated = await booked(pg_pool, row["id"])
    assert closed, "voxgate did not close the upstream session"
    assert voice == voice_cost(closed[0]["usage"]["seconds"]) and not any(estimated)
    assert row["end_reason"] == "client_closed"


async def test_a_burst_of_live_sessions_respects_the_concurrency_cap(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    cap, attempts = 8, 60
    tenant = await make_tenant(pg_pool)
    await set_policy(pg_pool, tenant, {"max_concurrent_sessions": cap})
    url = f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions"
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    release = asyncio.Event()

    async def one() -> str:
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=20) as ws:
                await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "session.started"
                await release.wait()
                return "open"
        except InvalidStatus as exc:
            body = json.loads(exc.response.body)
            return f"{exc.response.status_code}:{body['error']['code']}"

    tasks = [asyncio.create_task(one()) for _ in range(attempts)]
    await asyncio.sleep(0)
    async with asyncio.timeout(30):
        while sum(t.done() for t in tasks) < attempts - cap:
            await asyncio.sleep(0.05)
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert outcomes.count("open") == cap
    assert outcomes.count("429:concurrency_limit_exceeded") == attempts - cap


async def test_a_start_upstream_refuses_ends_the_session_and_a_second_start_never_reaches_upstream(
    gw: Gateway, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    # Found by a hostile review: after upstream refused a first start (a field the client controls),
    # a second start reached upstream unpoliced: another model and a forbidden voice, booked at the
    # first start's model. Now a start upstream refuses ends the session (close 4010, its lease
    # freed), and any later start on a live session gets voxgate's `error` and stays local.
    tenant = await make_tenant(pg_pool)
    await set_policy(pg_pool, tenant, {"models": ["gpt-live-1"], "voices": ["marin"]})
    url = f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions"
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    sessions_before = len(emu.live.sessions)
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1", "bogus": 1}}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["type"] == "error", first  # upstream's own refusal of the unknown field
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4010
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "session.started":
            pass
        second = {"type": "session.start", "event_id": "evt_2", "session": {"model": "gpt-live-1.1", "voice": "alloy"}}
        await ws.send(json.dumps(second))
        refused = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert refused["type"] == "error" and refused["client_event_id"] == "evt_2"
        assert refused["error"]["code"] == "session_already_started"
    starts = [
        e["session"]["model"]
        for upstream in emu.live.sessions[sessions_before:]
        for e in upstream.protocol.client_events
        if e.get("type") == "session.start"
    ]
    assert starts == ["gpt-live-1", "gpt-live-1"]
