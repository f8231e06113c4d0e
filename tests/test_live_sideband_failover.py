"""A GPT-Live WebRTC session outlives the replica holding its sideband: another replica claims it,
re-attaches (`/v1/live/sessions/{id}/attach`) and meters on from what the ledger holds, so the
cumulative usage is booked once (replaced, never summed). Two `voxgate serve` processes sharing
Postgres and Redis, the real `openai` SDK and an aiortc peer, to the emulator."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from openai import AsyncOpenAI

from emulator import RealtimeEmulator
from gateway.services import SHUTDOWN_WAIT_SECONDS
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.context import context_of
from gateway.webrtc.live_calls import live_context_of
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, replica_settings, start_emulator, start_gateway
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer
from tests.test_concurrency_replicas import LEASE_TTL_S, SLACK_S, gateway_process

pytestmark = pytest.mark.e2e

SCAN_S = 0.2  # VOXGATE_CALLS_SCAN_SECONDS of both replicas (`serve` wants < LEASE_TTL_S/6)
CLAIM_TTL_S = LEASE_TTL_S / 2  # a Live sideband's claim lives half a lease TTL (gateway/webrtc/live_failover.py)
USAGE_INTERVAL_S = 0.5
PREPAID_S = 15  # the WebRTC initialisation charge: reports exceed it after 16 s
# Published GPT-Live rates (docs/pricing.md): $0.05/min active, $0.02/min standby.
ACTIVE_MICRO_USD_PER_MIN = 50_000
STANDBY_MICRO_USD_PER_MIN = 20_000
SESSION: Any = {"model": "gpt-live-1", "instructions": "Answer briefly."}


def voice_cost(usage: dict[str, Any]) -> int:
    """The published per-minute rates over the emulator's final figures, rounded half up once."""
    total = usage["active_seconds"] * ACTIVE_MICRO_USD_PER_MIN + usage["paused_seconds"] * STANDBY_MICRO_USD_PER_MIN
    return (2 * total + 60) // 120


@pytest.fixture
async def live_emulator() -> AsyncIterator[RealtimeEmulator]:
    emulator = await start_emulator(live_usage_interval_s=USAGE_INTERVAL_S)
    yield emulator
    await emulator.stop()


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


def http_base(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").split("/v1/")[0] + "/v1"


async def test_a_killed_replicas_live_sideband_is_taken_over_and_booked_once(
    pg_dsn: str,
    live_emulator: RealtimeEmulator,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_prefix: str,
    redis_client: Any,
    peer: ClientPeer,
) -> None:
    prefix = f"{redis_prefix}live-failover:"
    upstream = live_emulator.base_url
    async with (
        gateway_process(pg_dsn, upstream, prefix, "pod-a", scan=str(SCAN_S)) as (proc_a, url_a),
        gateway_process(pg_dsn, upstream, prefix, "pod-b", scan=str(SCAN_S)) as (_, url_b),
    ):
        on_a = AsyncOpenAI(base_url=http_base(url_a), api_key=tenant.secret, max_retries=0)
        on_b = AsyncOpenAI(base_url=http_base(url_b), api_key=tenant.secret, max_retries=0)
        created = await on_a.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
        live_id = created.session.id
        await peer.accept(created.transport.sdp)
        await peer.wait_for("session.started")
        emulated = await until(lambda: _attached(live_emulator, live_id))
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)
        claim = f"{prefix}{{{tenant.tenant_id}}}:monitor:{live_id}"
        assert await redis_client.hget(claim, "owner") == b"pod-a"

        async def voice_rows() -> list[asyncpg.Record]:
            return await pg_pool.fetch(
                "SELECT usage_id, active_ms, standby_ms, cost_micro_usd, estimated FROM duration_usage "
                "WHERE session_id = $1 AND kind = 'live_voice' ORDER BY active_ms, standby_ms",
                session_id,
            )

        # pod-a books the 15 s opening charge, then each cumulative report past it (from 16 s on)
        await until(lambda: _more_than(voice_rows, 1), seconds=PREPAID_S + 10)
        booked_by_a = await voice_rows()

        proc_a.kill()  # SIGKILL: no drain, no release of its claim or its lease
        killed = time.monotonic()
        await proc_a.wait()
        # The documented bound (docs/live.md): the dead holder's claim lapses within a claim life, and
        # the next scan of a live replica takes it; SLACK_S for two processes on a shared CI machine.
        takeover_bound = CLAIM_TTL_S + SCAN_S + SLACK_S
        async with asyncio.timeout(3 * takeover_bound):  # waits past the bound, so the assert below can fail
            while await redis_client.hget(claim, "owner") != b"pod-b":
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        assert took <= takeover_bound
        await until(lambda: _attached(live_emulator, live_id, after=len(emulated.detached)))

        # pod-b meters on: its rows continue from pod-a's cumulative figure
        await until(lambda: _more_than(voice_rows, len(booked_by_a)))
        await on_b.live.sessions.hangup(live_id)
        assert emulated.hung_up
        closed = next(
            e
            for o in [*emulated.sidebands, *emulated.detached]
            for e in o.server_events
            if e["type"] == "session.closed"
        )

        async def ended() -> Any:
            return await pg_pool.fetchrow(
                "SELECT end_reason, cost_micro_usd, gateway_instance FROM realtime_sessions "
                "WHERE id = $1 AND ended_at IS NOT NULL",
                session_id,
            )

        row = await until(ended)
        rows = await voice_rows()
        # replaced, never summed: the rows add up to the final cumulative usage at the published rates
        assert sum(r["cost_micro_usd"] for r in rows) == voice_cost(closed["usage"])
        assert rows[-1]["active_ms"] == round(closed["usage"]["active_seconds"] * 1000)
        assert not any(r["estimated"] for r in rows)
        assert [r["usage_id"] for r in rows[: len(booked_by_a)]] == [r["usage_id"] for r in booked_by_a]
        assert all(
            (a["active_ms"], a["standby_ms"]) < (b["active_ms"], b["standby_ms"]) for a, b in itertools.pairwise(rows)
        )
        assert row["end_reason"] != "replica_lost"  # the session went on: it was never reaped as lost
        assert row["cost_micro_usd"] == sum(r["cost_micro_usd"] for r in rows)
        assert await pg_pool.fetchval("SELECT state FROM live_sessions WHERE live_session_id = $1", live_id) == "ended"
        await on_a.close()
        await on_b.close()


async def _attached(emulator: RealtimeEmulator, live_id: str, after: int = 0) -> Any:
    """The emulated session once a gateway sideband is attached (`after` earlier ones detached)."""
    session = emulator.live.find(live_id)
    if session is None or not session.sidebands or len(session.detached) < after:
        return None
    return session


async def _more_than(rows: Any, n: int) -> bool:
    return len(await rows()) > n


async def _scanning_replica(pg_dsn: str, upstream: str, prefix: str, name: str) -> Gateway:
    """A replica (of those sharing `prefix`) whose scan takes over Live sessions nobody holds."""
    return await start_gateway(replica_settings(pg_dsn, REDIS_URL, upstream, prefix, name, calls_scan_seconds=SCAN_S))


async def _create_live(gateway: Gateway, tenant: TenantKey, peer: ClientPeer) -> str:
    """A Live WebRTC session created through `gateway` for `peer`: its id, once the peer's channel is open."""
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    created = await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    await client.close()
    await peer.accept(created.transport.sdp)
    return created.session.id


async def test_a_draining_replica_hands_its_live_sessions_over_at_once(
    pg_dsn: str, live_emulator: RealtimeEmulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    """A drain (rolling deploy) stops metering here without ending the session or hanging it up: the
    claim is released, so the other replica resumes the sideband at its next scan."""
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    started: list[Gateway] = []
    try:
        for name in ("pod-a", "pod-b"):
            started.append(await _scanning_replica(pg_dsn, live_emulator.base_url, prefix, name))
        a, b = started
        live_id = await _create_live(a, tenant, peer)
        await peer.wait_for("session.started")
        emulated = await until(lambda: _attached(live_emulator, live_id))
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)

        await a.stop()  # drain with no grace: pod-a's sideband hands the session over
        started.remove(a)
        assert not emulated.hung_up
        async with asyncio.timeout(SCAN_S + SLACK_S + 2.0):  # released, so taken at pod-b's next scan
            while live_id not in live_context_of(context_of(b.app)).sidebands:
                await asyncio.sleep(0.05)
        await until(lambda: _attached(live_emulator, live_id, after=1))
        ended_early = await pg_pool.fetchval("SELECT ended_at FROM realtime_sessions WHERE id = $1", session_id)
        assert ended_early is None  # the drain did not end it

        on_b = AsyncOpenAI(base_url=b.base_url, api_key=tenant.secret, max_retries=0)
        await on_b.live.sessions.hangup(live_id)
        await on_b.close()
        closed = next(
            e
            for o in [*emulated.sidebands, *emulated.detached]
            for e in o.server_events
            if e["type"] == "session.closed"
        )

        async def ended() -> Any:
            return await pg_pool.fetchrow(
                "SELECT end_reason, cost_micro_usd FROM realtime_sessions WHERE id = $1 AND ended_at IS NOT NULL",
                session_id,
            )

        row = await until(ended)
        voice = await pg_pool.fetch(
            "SELECT cost_micro_usd, estimated FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'",
            session_id,
        )
        assert sum(r["cost_micro_usd"] for r in voice) == voice_cost(closed["usage"])  # the 15 s charge, once
        assert not any(r["estimated"] for r in voice)
        assert row["end_reason"] not in ("gateway_shutdown", "replica_lost")
    finally:
        for gateway in started:
            await gateway.stop()


async def test_a_drain_that_catches_a_sideband_connecting_hands_the_session_over_at_once(
    pg_dsn: str, live_emulator: RealtimeEmulator, tenant: TenantKey, peer: ClientPeer, redis_client: Any
) -> None:
    """A replica stopping while it takes a session over (its sideband still connecting upstream) stops
    as soon as the sideband connects, hands the session over (claim given back, no hangup) and
    leaves nothing of it running; it used to meter on until the shutdown's bounds ran out."""
    delay = 1.5
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    started: list[Gateway] = []

    async def replica(name: str) -> Gateway:
        gateway = await _scanning_replica(pg_dsn, live_emulator.base_url, prefix, name)
        started.append(gateway)
        return gateway

    try:
        x = await replica("pod-x")
        live_id = await _create_live(x, tenant, peer)
        emulated = await until(lambda: _attached(live_emulator, live_id))
        await x.stop()  # drained: the session is handed over, its claim released
        started.remove(x)

        live_emulator.faults.connect_delay_s = delay  # upstream answers the next sideband slowly
        a = await replica("pod-a")
        name = f"voxgate-live-sideband-{live_id}"
        async with asyncio.timeout(SCAN_S + SLACK_S + 2.0):  # pod-a's scan takes it over...
            while not (connecting := [t for t in asyncio.all_tasks() if t.get_name() == name]):
                await asyncio.sleep(0.02)
        sideband = live_context_of(context_of(a.app)).sidebands[live_id]
        assert sideband.upstream is None  # still connecting
        stopping = time.monotonic()
        await a.stop()  # ...and stops while its sideband connects
        started.remove(a)
        assert time.monotonic() - stopping < SHUTDOWN_WAIT_SECONDS - 0.5  # not the shutdown's 5 s bounds
        claim = f"{prefix}{{{tenant.tenant_id}}}:monitor:{live_id}"
        assert await redis_client.exists(claim) == 0  # its claim given back
        assert all(task.done() for task in connecting)
        assert not [t for t in asyncio.all_tasks() if t.get_name() == name]
        assert not emulated.hung_up and not emulated.done.is_set()  # the session goes on
        live_emulator.faults.connect_delay_s = 0.0
        b = await replica("pod-b")
        async with asyncio.timeout(SCAN_S + SLACK_S + 2.0):  # claim given back: taken at the next scan
            while live_id not in live_context_of(context_of(b.app)).sidebands:
                await asyncio.sleep(0.05)
    finally:
        live_emulator.faults.connect_delay_s = 0.0
        for gateway in started:
            await gateway.stop()


async def test_a_taken_over_live_session_of_a_budget_limited_tenant_goes_on(
    pg_dsn: str, live_emulator: RealtimeEmulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    """The replica that takes a Live session over reserves its budget windows under ids of its own: the
    ids its previous holder reserved and released are settled, and reserving one again is refused,
    which closed the session as `budget_exhausted` far below the tenant's budget."""
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"budget": {"daily_usd": "1000"}}, actor="test")
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    started: list[Gateway] = []
    try:
        a = await _scanning_replica(pg_dsn, live_emulator.base_url, prefix, "pod-a")
        started.append(a)
        live_id = await _create_live(a, tenant, peer)
        emulated = await until(lambda: _attached(live_emulator, live_id))
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)
        await asyncio.sleep(3 * USAGE_INTERVAL_S)  # pod-a reserves and releases budget windows
        b = await _scanning_replica(pg_dsn, live_emulator.base_url, prefix, "pod-b")  # pod-a holds the session
        started.append(b)

        await a.stop()  # drained: handed over, taken at pod-b's next scan
        started.remove(a)
        await until(lambda: _attached(live_emulator, live_id, after=1))
        await asyncio.sleep(4 * USAGE_INTERVAL_S)  # pod-b reserves windows of its own
        ended = await pg_pool.fetchrow("SELECT ended_at, end_reason FROM realtime_sessions WHERE id = $1", session_id)
        assert ended is not None and ended["ended_at"] is None, dict(ended or {})  # not `budget_exhausted`
        assert not emulated.done.is_set() and live_id in live_context_of(context_of(b.app)).sidebands
    finally:
        for gateway in started:
            await gateway.stop()
