"""A Live WebRTC session taken over by another replica keeps its limits and is metered by one replica
at a time (gateway/webrtc/live_failover.py). Two in-process gateways sharing Postgres and Redis,
the real `openai` SDK and an aiortc peer, to the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from openai import AsyncOpenAI

from emulator import RealtimeEmulator
from gateway.livestate.keys import KeyLayout
from gateway.livestate.state import LiveState
from gateway.settings import Settings
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.context import context_of
from gateway.webrtc.live_calls import live_context_of
from tests.conftest import REDIS_URL
from tests.support.clock import FakeClock, run_until
from tests.support.harness import Gateway, TenantKey, gateway_settings, replica_settings, start_emulator, start_gateway
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer
from tests.test_live_sideband_failover import SESSION, USAGE_INTERVAL_S, _attached

pytestmark = pytest.mark.e2e

SCAN_S = 0.2  # under a sixth of the lease TTL, as `serve` requires
LEASE_TTL_S = 1.5
CLAIM_TTL_S = LEASE_TTL_S / 2  # a Live sideband's claim lives half a lease TTL
MAX_SESSION_S = 5.0
SLACK_S = 1.0


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


async def _replica(pg_dsn: str, upstream: str, prefix: str, name: str, redis_url: str = REDIS_URL) -> Gateway:
    return await start_gateway(
        replica_settings(
            pg_dsn, redis_url, upstream, prefix, name, lease_ttl_seconds=LEASE_TTL_S, calls_scan_seconds=SCAN_S
        )
    )


async def test_a_taken_over_session_is_still_capped_at_its_original_deadline(
    pg_dsn: str,
    live_emulator: RealtimeEmulator,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_prefix: str,
    peer: ClientPeer,
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_session_seconds": MAX_SESSION_S}, actor="test")
    prefix = f"{redis_prefix}live-cap:"
    a = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-a")
    b = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-b")
    try:
        on_a = AsyncOpenAI(base_url=a.base_url, api_key=tenant.secret, max_retries=0)
        created = await on_a.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
        await on_a.close()
        live_id = created.session.id
        await peer.accept(created.transport.sdp)
        await until(lambda: _attached(live_emulator, live_id))
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)
        started_at = await until(
            lambda: pg_pool.fetchval("SELECT started_at FROM realtime_sessions WHERE id = $1", session_id)
        )

        await asyncio.sleep(2.0)
        await a.stop()  # drain: pod-b takes the session over at its next scan, 2 s or more into it
        b_sidebands = live_context_of(context_of(b.app)).sidebands
        await until(lambda: _true(live_id in b_sidebands), seconds=SCAN_S + SLACK_S + 2.0)

        async def ended() -> Any:
            return await pg_pool.fetchrow(
                "SELECT ended_at, end_reason FROM realtime_sessions WHERE id = $1 AND ended_at IS NOT NULL",
                session_id,
            )

        row = await until(ended, seconds=MAX_SESSION_S + 10)
        lasted = (row["ended_at"] - started_at).total_seconds()
        # Counted from the session's start, not from the takeover (which would end it after 7 s or more).
        assert MAX_SESSION_S <= lasted <= MAX_SESSION_S + SLACK_S
        assert row["end_reason"] == "duration_cap"
    finally:
        for gateway in (a, b):
            await gateway.stop()


async def test_a_holder_that_cannot_renew_its_claim_stops_metering_before_another_takes_over(
    pg_dsn: str,
    live_emulator: RealtimeEmulator,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_prefix: str,
    redis_client: Any,
    peer: ClientPeer,
) -> None:
    prefix = f"{redis_prefix}live-renew:"
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    a = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-a", redis_url=f"redis://127.0.0.1:{proxy.port}")
    b = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-b")
    try:
        on_a = AsyncOpenAI(base_url=a.base_url, api_key=tenant.secret, max_retries=0)
        created = await on_a.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
        await on_a.close()
        live_id = created.session.id
        await peer.accept(created.transport.sdp)
        await until(lambda: _attached(live_emulator, live_id))
        claim = f"{prefix}{{{tenant.tenant_id}}}:monitor:{live_id}"
        assert await redis_client.hget(claim, "owner") == b"pod-a"
        a_sidebands = live_context_of(context_of(a.app)).sidebands

        proxy.cut()  # pod-a can no longer renew; its claim lapses and pod-b's scan takes the session
        cut = time.monotonic()
        while await redis_client.hget(claim, "owner") != b"pod-b":
            assert time.monotonic() - cut < CLAIM_TTL_S + SCAN_S + 3 * SLACK_S
            await asyncio.sleep(0.02)
        # pod-a stopped metering before its claim could lapse: never two meters at once
        assert live_id not in a_sidebands
        # ...and forgot the session's lease (the next holder renews it): nothing of it stays tracked on pod-a
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)
        assert (tenant.tenant_id, session_id) not in context_of(a.app).services.enforcement._models
        assert time.monotonic() - cut >= CLAIM_TTL_S - SLACK_S
        await until(lambda: _true(live_id in live_context_of(context_of(b.app)).sidebands))
        ended = await pg_pool.fetchval(
            "SELECT s.ended_at FROM realtime_sessions s JOIN live_sessions l ON l.session_id = s.id "
            "WHERE l.live_session_id = $1",
            live_id,
        )
        assert ended is None  # handed over, not ended
    finally:
        proxy.restore()
        for gateway in (a, b):
            await gateway.stop()
        await proxy.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_sideband_that_cannot_be_claimed_is_not_metered_here_but_taken_over(
    pg_dsn: str,
    live_emulator: RealtimeEmulator,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_prefix: str,
    redis_client: Any,
    peer: ClientPeer,
) -> None:
    """pod-a cannot reach Redis when it creates the session (the tenant fails open): not knowing who
    holds the session, it does not meter it; pod-b's scan claims it and meters it alone."""
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"redis_unavailable": "fail_open"}, actor="test")
    prefix = f"{redis_prefix}live-claim:"
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    a = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-a", redis_url=f"redis://127.0.0.1:{proxy.port}")
    b = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-b")
    try:
        proxy.cut()
        on_a = AsyncOpenAI(base_url=a.base_url, api_key=tenant.secret, max_retries=0)
        created = await on_a.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
        await on_a.close()
        live_id = created.session.id
        await peer.accept(created.transport.sdp)
        claim = f"{prefix}{{{tenant.tenant_id}}}:monitor:{live_id}"
        b_sidebands = live_context_of(context_of(b.app)).sidebands
        await until(lambda: _true(live_id in b_sidebands), seconds=SCAN_S + 3 * SLACK_S)
        assert await redis_client.hget(claim, "owner") == b"pod-b"
        assert live_id not in live_context_of(context_of(a.app)).sidebands  # one meter: pod-b's
    finally:
        proxy.restore()
        for gateway in (a, b):
            await gateway.stop()
        await proxy.stop()


WORST_TTL_S = 6.0  # the worst-case test's lease TTL: heartbeats every 2 s, claims live 3 s
WORST_SCAN_S = 0.9  # just under a sixth of it, the slowest scan `serve` accepts
# A replica's background loops on its clock: a test moves the clock on only once each waits again.
LOOPS = frozenset({"voxgate-live-failover", "voxgate-calls-monitor", "voxgate-lease-heartbeat"})


async def start_on_clock(settings: Settings, clock: FakeClock) -> tuple[Gateway, list[asyncio.Task[Any]]]:
    """A replica on `clock`, and its background loops (for `run_until`)."""
    before = asyncio.all_tasks()
    gateway = await start_gateway(settings, clock=clock)
    loops = [task for task in asyncio.all_tasks() - before if task.get_name() in LOOPS]
    assert {task.get_name() for task in loops} == LOOPS
    return gateway, loops


def _assert_running(emulator: RealtimeEmulator, live_id: str) -> None:
    session = emulator.live.find(live_id)
    assert session is not None
    assert not session.done.is_set(), f"the session ended upstream: {session.protocol.closed_reason}"


async def test_a_takeover_renews_a_lease_its_dead_holder_left_a_sixth_of_a_ttl_to_live(
    pg_dsn: str,
    live_emulator: RealtimeEmulator,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_prefix: str,
    redis_client: Any,
    peer: ClientPeer,
) -> None:
    """The worst case: the holder renewed its sideband claim as it died (at `d`), its lease a heartbeat
    (T/3) before, so the lease lapses at d + 2T/3 while the claim lapses at d + T/2 and a scan takes the
    session up to a scan later; the new holder's own heartbeat may come up to T/3 after that. Another
    replica reaping in between must find the lease renewed by the takeover, not end the session."""
    ttl, beat = WORST_TTL_S, WORST_TTL_S / 3
    prefix = f"{redis_prefix}live-worst:"
    a = await _replica(pg_dsn, live_emulator.base_url, prefix, "pod-a")
    on_a = AsyncOpenAI(base_url=a.base_url, api_key=tenant.secret, max_retries=0)
    created = await on_a.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    await on_a.close()
    live_id = created.session.id
    await peer.accept(created.transport.sdp)
    await until(lambda: _attached(live_emulator, live_id))
    session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)
    await a.stop()  # pod-a stops metering, leaving the session running, its lease held and its rows active
    _assert_running(live_emulator, live_id)
    # a stopped replica has finished with its sidebands: claims given back, nothing of it left running
    assert await redis_client.exists(KeyLayout(prefix).tenant(tenant.tenant_id).monitor(live_id)) == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == f"voxgate-live-sideband-{live_id}"]

    # pod-b runs on a fake clock from w: its heartbeats at w + 2 and w + 4, its scans every 0.9 s
    clock = FakeClock(start=time.time())
    w = clock.time()
    died = w - 0.8  # its claim lapses at w + 2.2: pod-b's scan at w + 2.7 takes the session
    dead = LiveState(redis_client, prefix, "pod-a", clock)
    await dead.load_scripts()
    # pod-a's Redis state as it left it at its death: claim renewed then, lease a heartbeat earlier
    assert await dead.heartbeat([(tenant.tenant_id, session_id)], ttl, died - beat) == []
    assert await dead.claim_monitor(tenant.tenant_id, live_id, ttl / 2, died)
    lapses_at = died - beat + ttl  # d + 2T/3 = w + 3.2: after the takeover, before pod-b's heartbeat at w + 4
    settings = gateway_settings(pg_dsn, REDIS_URL, live_emulator.base_url)
    enforcement = replace(
        settings.enforcement,
        lease_ttl_seconds=ttl,
        calls_scan_seconds=WORST_SCAN_S,
        reap_interval_seconds=3600.0,  # another replica reaps: pod-b never ends a session it carries
    )
    b, loops = await start_on_clock(
        replace(
            settings,
            redis=replace(settings.redis, key_prefix=prefix),
            server=replace(settings.server, instance_id="pod-b"),
            enforcement=enforcement,
        ),
        clock,
    )
    leases = KeyLayout(prefix).tenant(tenant.tenant_id).leases
    try:
        b_sidebands = live_context_of(context_of(b.app)).sidebands
        await asyncio.sleep(0.2)  # pod-b's loops wait on its clock
        await run_until(clock, 2.65, loops)
        assert live_id not in b_sidebands  # the dead holder's claim held until w + 2.2
        _assert_running(live_emulator, live_id)
        await run_until(clock, 2.75, loops)  # pod-b's first scan after the claim lapsed
        assert live_id in b_sidebands, "not taken over"
        assert clock.time() < lapses_at  # the dead holder's lease still held

        await run_until(clock, lapses_at - w + 0.3, loops)  # the dead holder's lease would have lapsed...
        reaper = LiveState(redis_client, prefix, "pod-c", clock)  # ...when another replica reaps
        reaped = await reaper.reap_expired(clock.time())
        assert (tenant.tenant_id, session_id) not in reaped
        score = await redis_client.zscore(leases, session_id)
        assert score is not None and score >= w + 2.7 + ttl  # renewed by the takeover, a whole TTL

        assert clock.time() < w + 4.0  # ...and pod-b's own heartbeat has yet to come
        await run_until(clock, 4.05, loops)  # then it renews the lease on
        assert await redis_client.zscore(leases, session_id) >= w + 4.0 + ttl
        ended = await pg_pool.fetchval("SELECT ended_at FROM realtime_sessions WHERE id = $1", session_id)
        assert ended is None  # never reaped as `replica_lost`
        await until(lambda: _attached(live_emulator, live_id, after=1))  # pod-b meters it on
    finally:
        on_b = AsyncOpenAI(base_url=b.base_url, api_key=tenant.secret, max_retries=0)
        with contextlib.suppress(Exception):
            await on_b.live.sessions.hangup(live_id)
        await on_b.close()
        with contextlib.suppress(Exception):
            await run_until(clock, clock.monotonic() + 1.0, loops)  # the end is booked
        await b.stop()
