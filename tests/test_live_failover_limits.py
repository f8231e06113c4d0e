"""A Live WebRTC session taken over by another replica keeps its limits and is metered by one replica
at a time (gateway/webrtc/live_failover.py). Two in-process gateways sharing Postgres and Redis,
the real `openai` SDK and an aiortc peer, to the emulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from openai import AsyncOpenAI

from emulator import RealtimeEmulator
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.context import context_of
from gateway.webrtc.live_calls import live_context_of
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_emulator, start_gateway
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer
from tests.test_live_sideband_failover import SESSION, USAGE_INTERVAL_S, _attached

pytestmark = pytest.mark.e2e

SCAN_S = 0.5
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
    settings = gateway_settings(pg_dsn, redis_url, upstream)
    return await start_gateway(
        replace(
            settings,
            redis=replace(settings.redis, key_prefix=prefix),
            server=replace(settings.server, instance_id=name),
            enforcement=replace(settings.enforcement, lease_ttl_seconds=LEASE_TTL_S, calls_scan_seconds=SCAN_S),
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
