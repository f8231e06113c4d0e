"""A GPT-Live session's usage rows are durable before the event carrying them reaches the client.

As for a Realtime `response.done` (tests/test_response_billing.py), voxgate holds a
`session.usage.updated`, a terminal `response.event` and a `session.closed` until the rows they
book are committed, or, with Postgres unreachable, journaled to the spool and fsynced; the rows
then reach Postgres exactly once. Expected costs are computed here from the emulator's figures at
the published $0.05/min (50,000 micro-USD a minute), never from voxgate's code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import websockets
from openai import AsyncOpenAI

from emulator import RealtimeEmulator
from emulator.audio import silence, tone
from tests.conftest import REDIS_URL
from tests.support.gateway_process import delete_keys, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, Gateway, make_tenant, start_emulator, start_gateway
from tests.support.harness import gateway_settings as base_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until

pytestmark = pytest.mark.e2e

USAGE_INTERVAL_S = 0.5
VOICE_PER_MINUTE = 50_000  # micro-USD, gpt-live-1
DURABLE_TIMEOUT_S = 0.5
SPEECH = base64.b64encode(tone(800) + silence(700)).decode()


def voice_cost(seconds: float) -> int:
    total = round(seconds * 1000) * VOICE_PER_MINUTE
    return (2 * total + 60_000) // 120_000


def usage_id(seconds: float) -> str:
    """What a WebSocket session's cumulative `seconds` is booked under: all active, in milliseconds."""
    return f"{round(seconds * 1000)}:0"


def via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@pytest.fixture(scope="module")
async def emu() -> AsyncIterator[RealtimeEmulator]:
    emulator = await start_emulator(live_usage_interval_s=USAGE_INTERVAL_S)
    yield emulator
    await emulator.stop()


async def new_time_sent(upstream: Any, index: int) -> tuple[float, dict[str, Any]]:
    """When upstream sent (and what) its first report from `index` on with more seconds than any before it."""
    events = upstream.primary.server_events
    before = max((e["usage"]["seconds"] for e in events[:index] if e["type"] == "session.usage.updated"), default=0)
    while True:
        for event in events[index:]:
            if event["type"] == "session.usage.updated" and event["usage"]["seconds"] > before:
                return time.monotonic(), event
        index = len(events)
        await asyncio.sleep(0.005)


async def next_report(ws: Any, watch: asyncio.Task[tuple[float, dict[str, Any]]]) -> Any:
    """The client's copy of the report `watch` finds upstream (the first with new time); an earlier
    copy would mean voxgate did not hold it, and the wait times out."""
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] != "session.usage.updated":
                continue
            if watch.done() and event["event_id"] == watch.result()[1]["event_id"]:
                return event


async def voice_rows(pool: asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT d.usage_id, d.cost_micro_usd, d.estimated FROM duration_usage d "
        "JOIN realtime_sessions s ON s.id = d.session_id WHERE s.tenant_id = $1 AND d.kind = 'live_voice'",
        tenant_id,
    )


async def test_each_usage_event_reaches_the_client_only_once_its_row_is_committed(
    pg_dsn: str, emu: RealtimeEmulator, pg_pool: asyncpg.Pool
) -> None:
    gw = await start_gateway(base_settings(pg_dsn, REDIS_URL, emu.base_url))
    tenant = await make_tenant(pg_pool)
    client = AsyncOpenAI(base_url=gw.base_url, api_key=tenant.secret)
    delegation: Any = {"type": "responses", "responses": {"model": "gpt-5.5"}}
    checked_usage, checked_responses = 0, 0
    try:
        async with client.live.connect() as connection:
            await connection.session.start(session={"model": "gpt-live-1", "delegation": delegation})
            await connection.session.input_audio.append(audio=SPEECH)
            async with asyncio.timeout(15):
                async for event in connection:
                    # Queried the moment the client holds the event: its row must already be committed.
                    if event.type == "session.usage.updated" and event.usage.seconds > 0:  # 0 s books nothing
                        ids = {r["usage_id"] for r in await voice_rows(pg_pool, tenant.tenant_id)}
                        assert usage_id(event.usage.seconds) in ids, (event.usage, ids)
                        checked_usage += 1
                    elif event.type == "response.event" and event.event["type"] == "response.completed":
                        response_id = event.event["response"]["id"]
                        count = await pg_pool.fetchval(
                            "SELECT count(*) FROM live_token_usage WHERE usage_id = $1 AND kind = 'response'",
                            response_id,
                        )
                        assert count == 1, f"response {response_id} reached the client before its row"
                        checked_responses += 1
                    if checked_usage >= 3 and checked_responses >= 1:
                        break
    finally:
        await client.close()
        await gw.stop()
    assert (checked_usage, checked_responses) == (3, 1)


async def test_with_postgres_cut_and_the_client_gone_the_usage_is_journaled_and_lands_once(
    pg_dsn: str, emu: RealtimeEmulator, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    parts = urlsplit(pg_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    settings = base_settings(via(pg_dsn, proxy.port), REDIS_URL, emu.base_url)
    settings = replace(
        settings, ledger=replace(settings.ledger, spool_dir=tmp_path, durable_timeout_seconds=DURABLE_TIMEOUT_S)
    )
    gw: Gateway = await start_gateway(settings)
    tenant = await make_tenant(pg_pool)
    try:
        ws = await websockets.connect(
            f"ws://{gw.server.host}:{gw.server.port}/v1/live/sessions",
            additional_headers={"Authorization": f"Bearer {tenant.secret}"},
        )
        await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
        started = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert started["type"] == "session.started"
        while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "session.usage.updated":
            pass
        await asyncio.sleep(0.2)  # the session's start and first usage are committed
        proxy.cut()  # Postgres becomes unreachable for voxgate

        # The first report that books new time is held for the commit that cannot come, then for the
        # journal's fsync. (The emulator reports whole seconds, so some reports book nothing new.)
        upstream = emu.live.find(started["session"]["id"])
        watch = asyncio.create_task(new_time_sent(upstream, len(upstream.primary.server_events)))
        event = await next_report(ws, watch)
        received_at = time.monotonic()
        sent_at, reported = watch.result()
        assert reported["usage"] == event["usage"]
        assert received_at - sent_at >= DURABLE_TIMEOUT_S * 0.8
        spool = tmp_path / "ledger-spool.jsonl"
        assert usage_id(event["usage"]["seconds"]).encode() in spool.read_bytes()

        ws.transport.abort()  # and the client vanishes: voxgate closes upstream and books session.closed

        async def closed() -> Any:
            return [e for e in upstream.primary.server_events if e["type"] == "session.closed"]

        [final] = await until(closed)

        async def journaled() -> bool:  # the final usage is made durable on disk while Postgres is away
            return usage_id(final["usage"]["seconds"]).encode() in spool.read_bytes()

        await until(journaled)
        assert (
            await pg_pool.fetchval(
                "SELECT count(*) FROM duration_usage WHERE usage_id = $1 AND session_id IN "
                "(SELECT id FROM realtime_sessions WHERE tenant_id = $2)",
                usage_id(final["usage"]["seconds"]),
                tenant.tenant_id,
            )
            == 0
        )
        proxy.restore()

        async def ended() -> Any:
            return await pg_pool.fetchrow(
                "SELECT id, cost_micro_usd, end_reason FROM realtime_sessions "
                "WHERE tenant_id = $1 AND ended_at IS NOT NULL",
                tenant.tenant_id,
            )

        row = await until(ended, seconds=20)
        await gw.settle()
        rows = await voice_rows(pg_pool, tenant.tenant_id)
        # Exactly once: the rows add up to the final figure at the published rate, no more, none estimated.
        assert sum(r["cost_micro_usd"] for r in rows) == voice_cost(final["usage"]["seconds"])
        assert usage_id(final["usage"]["seconds"]) in {r["usage_id"] for r in rows}
        assert not any(r["estimated"] for r in rows)
        assert row["cost_micro_usd"] == voice_cost(final["usage"]["seconds"])
        assert row["end_reason"] == "client_closed"
        stats = gw.services.ledger.stats
        assert stats.journaled >= 1 and (stats.dropped, stats.unconfirmed) == (0, 0)  # fsynced, never only in memory
    finally:
        proxy.restore()
        await gw.stop()
        await proxy.stop()


async def test_a_gateway_killed_right_after_a_usage_event_replays_its_row_once_at_restart(
    pg_dsn: str, emu: RealtimeEmulator, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """`voxgate serve` as a process, Postgres cut: the usage the client saw is only in the fsynced
    journal when the gateway is SIGKILLed; a restart on the same spool books it exactly once."""
    parts = urlsplit(pg_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    spool = tmp_path / "spool"
    spool.mkdir()
    prefix = f"vglive:{secrets.token_hex(4)}:"
    env = gateway_env(
        via(pg_dsn, proxy.port),
        REDIS_URL,
        emu.base_url,
        prefix,
        UPSTREAM_KEY,
        VOXGATE_SPOOL_DIR=str(spool),
        VOXGATE_LEDGER_DURABLE_TIMEOUT_SECONDS=str(DURABLE_TIMEOUT_S),
    )
    tenant = await make_tenant(pg_pool)
    try:
        async with gateway_process(env, tmp_path, instance_id="live-kill") as gateway:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{gateway.port}/v1/live/sessions",
                additional_headers={"Authorization": f"Bearer {tenant.secret}"},
            )
            await ws.send(json.dumps({"type": "session.start", "session": {"model": "gpt-live-1"}}))
            started = json.loads(await asyncio.wait_for(ws.recv(), 5))
            upstream = emu.live.find(started["session"]["id"])
            while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "session.usage.updated":
                pass
            await asyncio.sleep(0.2)  # the session's start and first usage are committed
            proxy.cut()
            watch = asyncio.create_task(new_time_sent(upstream, len(upstream.primary.server_events)))
            seen = float((await next_report(ws, watch))["usage"]["seconds"])  # released once journaled
            gateway.proc.kill()
            assert await gateway.proc.wait() == -signal.SIGKILL
            ws.transport.abort()
        assert (
            await pg_pool.fetchval(
                "SELECT count(*) FROM duration_usage d JOIN realtime_sessions s ON s.id = d.session_id "
                "WHERE s.tenant_id = $1 AND d.usage_id = $2",
                tenant.tenant_id,
                usage_id(seen),
            )
            == 0
        )  # not in Postgres before the restart: only the journal has it
        proxy.restore()
        restarted = {**env, "VOXGATE_DATABASE_URL": pg_dsn}
        async with gateway_process(restarted, tmp_path, instance_id="live-kill") as gateway:
            await gateway.idle()
    finally:
        proxy.restore()
        await proxy.stop()
        await delete_keys(REDIS_URL, prefix)
    rows = await voice_rows(pg_pool, tenant.tenant_id)
    booked_ms = max(int(r["usage_id"].split(":")[0]) for r in rows)
    assert usage_id(seen) in {r["usage_id"] for r in rows}  # what the client saw is billed
    assert booked_ms >= round(seen * 1000)
    # Exactly once: the rows add up to the cumulative time they book up to, at the published rate.
    assert sum(r["cost_micro_usd"] for r in rows) == voice_cost(booked_ms / 1000)
