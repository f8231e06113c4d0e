"""Live state degrades, never lies: a real gateway whose link to Redis is cut and restored.

The gateway reaches Redis through a loopback TCP proxy (tests/support/tcp_proxy.py), so an outage
is a real one: pooled connections die and new ones are refused. An observer talks to Redis
directly, as another replica would. Bounds asserted are the documented ones (docs/live-state.md).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
import websockets
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.livestate import LiveState
from gateway.livestate.repair import RETRY_INTERVAL_S
from gateway.pools import database_pool, redis_client
from gateway.session.enforcement import REBUILD_LEDGER_WAIT_S
from gateway.settings import DatabaseSettings, EnforcementSettings, RedisSettings, Settings, SettingsError
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

# VOXGATE_REDIS_SOCKET_TIMEOUT_SECONDS of the gateway under test (0.5 s tripped once on a loaded CI loop)
SOCKET_TIMEOUT_S = 1.0
POLICY: dict[str, Any] = {"models": ["gpt-realtime"], "voices": ["marin"]}


async def set_policy(pool: asyncpg.Pool, tenant: TenantKey, **fields: Any) -> None:
    await PolicyStore(pool, {}, None).set(tenant.tenant_id, {**POLICY, **fields}, actor="test")


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    target = urlsplit(REDIS_URL)
    assert target.scheme == "redis" and target.hostname and target.port, "these tests need Redis over TCP"
    proxy = await TcpProxy(target.hostname, target.port).start()
    yield proxy
    await proxy.stop()


async def proxied_gateway(
    pg_dsn: str, emulator: Any, proxy: TcpProxy, lease_ttl_s: float, replica_of: Gateway | None = None
) -> Gateway:
    """A gateway reaching Redis through `proxy`; `replica_of` shares that gateway's keys."""
    settings = gateway_settings(pg_dsn, f"redis://127.0.0.1:{proxy.port}", emulator.base_url)
    prefix = settings.redis.key_prefix if replica_of is None else replica_of.settings.redis.key_prefix
    redis = replace(
        settings.redis,
        key_prefix=prefix,
        pool_size=8,
        pool_timeout_seconds=2.0,
        socket_timeout_seconds=SOCKET_TIMEOUT_S,
    )
    enforcement = EnforcementSettings(lease_ttl_seconds=lease_ttl_s, reap_interval_seconds=0.3, calls_scan_seconds=0)
    settings = replace(settings, redis=redis, enforcement=enforcement)
    return await start_gateway(settings)


@pytest.fixture
async def observer() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def watch(client: aioredis.Redis, gw: Gateway) -> LiveState:
    """Another replica's view of the gateway's live state (straight to Redis, never cut)."""
    return LiveState(client, gw.settings.redis.key_prefix, "observer")


async def open_session(gw: Gateway, tenant: TenantKey) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"{gw.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    )
    await next_of(ws, "session.created")
    return ws


async def next_of(ws: websockets.ClientConnection, kind: str, seconds: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event


async def one_response(ws: websockets.ClientConnection) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say something"}]}
    await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    return await next_of(ws, "response.done")


async def eventually(check: Any, within: float, step: float = 0.05) -> float:
    """Poll `check()` until true; returns the seconds it took, fails after `within`."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, f"not within {within:.2f} s"
        await asyncio.sleep(step)
    return time.monotonic() - start


async def test_a_redis_outage_longer_than_the_lease_ttl_ends_no_live_session(
    pg_dsn: str,
    emulator: Any,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_proxy: TcpProxy,
    observer: aioredis.Redis,
) -> None:
    """Redis is down for every replica (two gateways behind the cut link): when it returns, no
    replica reaps its own sessions nor another's whose heartbeat stopped only because of the outage."""
    ttl = 1.5
    a = await proxied_gateway(pg_dsn, emulator, redis_proxy, ttl)
    b = await proxied_gateway(pg_dsn, emulator, redis_proxy, ttl, replica_of=a)
    gateways = [a, b]
    try:
        await set_policy(pg_pool, tenant, max_concurrent_sessions=5)
        other = watch(observer, a)
        sockets = [await open_session(gw, tenant) for gw in (a, a, b)]
        assert await other.active_sessions(tenant.tenant_id, time.time()) == 3

        redis_proxy.cut()
        await asyncio.sleep(2 * ttl + 0.5)  # every lease has expired in Redis by now
        assert await other.active_sessions(tenant.tenant_id, time.time()) == 0
        redis_proxy.restore()

        # Documented bound: a replica holds its own leases again within socket timeout + reap
        # interval + heartbeat interval of Redis answering; no reaper ends a session meanwhile.
        bound = SOCKET_TIMEOUT_S + 0.3 + ttl / 3
        await eventually(lambda: _active_is(other, tenant, 3), within=bound)
        await asyncio.sleep(3 * 0.3 + ttl / 3)  # the reapers run again, past their post-outage grace
        for ws in sockets:
            assert (await one_response(ws))["response"]["status"] == "completed"  # still relayed
        for gw in gateways:
            assert await gw.services.ledger.drain(5)
        ended = await pg_pool.fetchval(
            "SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1 AND ended_at IS NOT NULL", tenant.tenant_id
        )
        assert ended == 0
        assert (len(a.services.live), len(b.services.live)) == (2, 1)
        for ws in sockets:
            await ws.close()
        await eventually(lambda: _active_is(other, tenant, 0), within=2.0)
        for gw in gateways:
            await gw.settle()
        reasons = await pg_pool.fetch("SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
        assert [r["end_reason"] for r in reasons] == ["client_closed"] * 3
    finally:
        for gw in gateways:
            await gw.stop()


async def _active_is(state: LiveState, tenant: TenantKey, count: int) -> bool:
    return await state.active_sessions(tenant.tenant_id, time.time()) == count


async def test_releases_that_fail_during_a_blip_are_retried_not_left_to_the_ttl(
    pg_dsn: str,
    emulator: Any,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_proxy: TcpProxy,
    observer: aioredis.Redis,
) -> None:
    ttl = 30.0  # far longer than the test: only a retried release can free these slots
    gw = await proxied_gateway(pg_dsn, emulator, redis_proxy, ttl)
    try:
        await set_policy(pg_pool, tenant, max_concurrent_sessions=6)
        other = watch(observer, gw)
        sockets = await asyncio.gather(*(open_session(gw, tenant) for _ in range(6)))
        assert await other.active_sessions(tenant.tenant_id, time.time()) == 6

        redis_proxy.cut()
        await asyncio.gather(*(ws.close() for ws in sockets))
        await eventually(lambda: _no_live(gw), within=5.0)
        repairs = gw.services.enforcement.repairs
        assert repairs.stats.releases_failed == 6
        assert await other.active_sessions(tenant.tenant_id, time.time()) == 6  # not released yet

        redis_proxy.restore()
        # Documented bound: a failed release is applied within the retry interval + socket timeout
        # of Redis answering again.
        await eventually(lambda: _active_is(other, tenant, 0), within=RETRY_INTERVAL_S + SOCKET_TIMEOUT_S + 0.25)
        assert (repairs.stats.releases_retried, repairs.stats.releases_left_to_ttl) == (6, 0)
        again = await asyncio.gather(*(open_session(gw, tenant) for _ in range(6)))  # full capacity is back
        await asyncio.gather(*(ws.close() for ws in again))
    finally:
        await gw.stop()


async def _no_live(gw: Gateway) -> bool:
    return len(gw.services.live) == 0


async def test_settles_lost_in_an_outage_are_rebuilt_from_the_ledger(
    pg_dsn: str,
    emulator: Any,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_proxy: TcpProxy,
    observer: aioredis.Redis,
) -> None:
    gw = await proxied_gateway(pg_dsn, emulator, redis_proxy, 5.0)
    try:
        await set_policy(pg_pool, tenant, budget={"daily_usd": "100"})
        other = watch(observer, gw)
        ws = await open_session(gw, tenant)
        await one_response(ws)  # settled while Redis answers

        redis_proxy.cut()
        for _ in range(3):  # metered into the ledger; their reservations and settles fail
            assert (await one_response(ws))["response"]["status"] == "completed"
        await asyncio.sleep(0.5)  # the session's effects have run (and failed) by now
        redis_proxy.restore()
        assert await gw.services.ledger.drain(5)
        ledger = await pg_pool.fetchval(
            "SELECT COALESCE(sum(cost_micro_usd), 0) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
        )
        responses = await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id)
        assert (responses, ledger > 0) == (4, True)

        # Documented bound: the counters equal the ledger again within the retry interval + socket
        # timeout + the ledger wait before a rebuild, plus the rebuild's own two queries (1 s here).
        async def exact() -> bool:
            st = await other.spend(tenant.tenant_id, time.time())
            return (st.known, st.spent_day, st.spent_month, st.reserved_day) == (True, ledger, ledger, 0)

        await eventually(exact, within=RETRY_INTERVAL_S + SOCKET_TIMEOUT_S + REBUILD_LEDGER_WAIT_S + 1.0)
        repairs = gw.services.enforcement.repairs
        await eventually(lambda: _repaired(gw), within=1.0)  # the loop finishes what it was doing
        assert repairs.stats.settles_failed == 3 and repairs.stats.counters_rebuilt >= 1
        assert (await one_response(ws))["response"]["status"] == "completed"  # and settles count again
        await ws.close()
        await gw.settle()
        total = await pg_pool.fetchval(
            "SELECT COALESCE(sum(cost_micro_usd), 0) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
        )
        await eventually(lambda: _spent_is(other, tenant, total), within=2.0)
    finally:
        await gw.stop()


async def test_after_a_redis_cut_counters_equal_the_ledger_and_no_lease_is_held_without_new_sessions(
    pg_dsn: str,
    emulator: Any,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    redis_proxy: TcpProxy,
    observer: aioredis.Redis,
) -> None:
    """Sessions run and end while Redis is cut; once it answers, with no session opened after the
    outage (no admission to trigger a rebuild), the counters become the ledger's sums and every lease
    is given back, within the documented bound."""
    ttl = 3.0  # heartbeats every second: several run across the outage, as in a burst
    gw = await proxied_gateway(pg_dsn, emulator, redis_proxy, ttl)
    try:
        await set_policy(pg_pool, tenant, budget={"daily_usd": "100"}, max_concurrent_sessions=10)
        other = watch(observer, gw)
        sockets = await asyncio.gather(*(open_session(gw, tenant) for _ in range(8)))
        await asyncio.gather(*(one_response(ws) for ws in sockets))  # settled while Redis answers
        assert await other.active_sessions(tenant.tenant_id, time.time()) == 8

        redis_proxy.cut()
        await asyncio.gather(*(one_response(ws) for ws in sockets))  # metered; reservations and settles fail
        ending, staying = sockets[:5], sockets[5:]
        await asyncio.gather(*(ws.close() for ws in ending))  # sessions end during the outage
        await eventually(lambda: _live_is(gw, 3), within=5.0)
        await asyncio.sleep(ttl / 3)  # a heartbeat runs (and fails) during the outage too
        redis_proxy.restore()
        restored = time.monotonic()
        await asyncio.gather(*(ws.close() for ws in staying))  # ...and the rest right after it
        await eventually(lambda: _live_is(gw, 0), within=5.0)
        assert await gw.services.ledger.drain(5)
        ledger = await pg_pool.fetchval(
            "SELECT COALESCE(sum(cost_micro_usd), 0) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
        )
        assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 16

        # Documented bound (docs/live-state.md, "When Redis is unreachable"): the retry interval + socket
        # timeout + the ledger wait before a rebuild + the rebuild's own queries (1 s here), from the restore.
        bound = RETRY_INTERVAL_S + SOCKET_TIMEOUT_S + REBUILD_LEDGER_WAIT_S + 1.0

        async def exact() -> bool:
            st = await other.spend(tenant.tenant_id, time.time())
            leases = await other.active_sessions(tenant.tenant_id, time.time())
            return (st.known, st.spent_day, st.spent_month, st.reserved_day, leases) == (True, ledger, ledger, 0, 0)

        await eventually(exact, within=bound - (time.monotonic() - restored))
        # ...and it stays so: no late heartbeat or reap takes a lease back, no repair undoes the counters.
        await asyncio.sleep(ttl / 3 + 2 * 0.3)
        assert await exact()
        repairs = gw.services.enforcement.repairs
        assert repairs.stats.settles_failed >= 8 and repairs.stats.releases_left_to_ttl == 0
        reasons = await pg_pool.fetch("SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
        assert sorted(r["end_reason"] for r in reasons) == ["client_closed"] * 8
    finally:
        await gw.stop()


async def _live_is(gw: Gateway, count: int) -> bool:
    return len(gw.services.live) == count


async def _repaired(gw: Gateway) -> bool:
    return gw.services.enforcement.repairs.pending == 0


async def _spent_is(state: LiveState, tenant: TenantKey, amount: int) -> bool:
    return (await state.spend(tenant.tenant_id, time.time())).spent_day == amount


# -- bounded, blocking pools ----------------------------------------------------------------


async def test_settings_size_both_pools() -> None:
    env = {
        "VOXGATE_REDIS_POOL_SIZE": "12",
        "VOXGATE_REDIS_POOL_TIMEOUT_SECONDS": "0.5",
        "VOXGATE_REDIS_SOCKET_TIMEOUT_SECONDS": "1.5",
        "VOXGATE_DATABASE_POOL_TIMEOUT_SECONDS": "3",
    }
    s = Settings.from_env(env)
    assert (s.redis.pool_size, s.redis.pool_timeout_seconds, s.redis.socket_timeout_seconds) == (12, 0.5, 1.5)
    assert s.database.pool_timeout_seconds == 3.0
    defaults = Settings.from_env({})
    assert (defaults.redis.pool_size, defaults.redis.pool_timeout_seconds, defaults.database.pool_timeout_seconds) == (
        32,
        2.0,
        5.0,
    )
    with pytest.raises(SettingsError, match="VOXGATE_REDIS_POOL_SIZE"):
        Settings.from_env({"VOXGATE_REDIS_POOL_SIZE": "1"})


async def test_a_full_redis_pool_makes_commands_wait_then_fail_after_its_timeout() -> None:
    client = redis_client(
        RedisSettings(url=REDIS_URL, pool_size=2, pool_timeout_seconds=0.3, socket_timeout_seconds=5.0)
    )
    key = f"vgtest:pool:{secrets.token_hex(4)}"
    try:
        # Two blocking reads hold both connections; a third command waits for one...
        blockers = [asyncio.create_task(client.blpop([key], timeout=2)) for _ in range(2)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        assert 0.3 <= time.monotonic() - started < 1.0  # ...for the pool timeout, then fails
        # ...and succeeds as soon as one is given back.
        waiting = asyncio.create_task(client.ping())
        await asyncio.sleep(0.1)
        await observer_push(key)
        assert await waiting
        for task in blockers:
            task.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
    finally:
        await client.aclose()


async def observer_push(key: str) -> None:
    other = aioredis.from_url(REDIS_URL)
    try:
        await other.rpush(key, "x")
    finally:
        await other.aclose()


async def test_a_full_postgres_pool_makes_acquires_wait_then_time_out(pg_dsn: str) -> None:
    pool = await database_pool(DatabaseSettings(url=pg_dsn, pool_min=1, pool_max=1, pool_timeout_seconds=0.3))
    try:
        async with pool.acquire():
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.fetchval("SELECT 1")  # no explicit timeout: the pool's applies
            assert 0.3 <= time.monotonic() - started < 1.0
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
