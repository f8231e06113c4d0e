"""Live state beyond one Redis: a Redis Cluster, and a master that fails over under Sentinel.

The URL names the topology (docs/live-state.md, "Topologies"). The live-state contract suite runs
over a 3-node cluster too (tests/test_livestate_contract.py); here `voxgate serve` itself runs on a
cluster, and on a Sentinel-managed master that is SIGKILLed mid-traffic: admissions come back
through the promoted replica within a bound, live sessions keep running, and leases lost with the
old master's unreplicated writes are taken back by the heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import websockets
from redis.cluster import key_slot
from websockets.exceptions import InvalidStatus

from gateway.livestate.keys import KeyLayout
from gateway.pools import parse_redis_url, redis_client
from gateway.settings import RedisSettings
from tests.support.gateway_process import GatewayProcess, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, TenantKey, make_tenant, start_emulator
from tests.support.redis_cluster import (
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    SentinelSetup,
    redis_cluster_url,  # noqa: F401 - the session's cluster, a fixture
    redis_sentinel,
)

LEASE_TTL_S = 3.0  # heartbeat every third: 1 s
SOCKET_TIMEOUT_S = 1.0
# Kill to first admission through the promoted replica: the sentinels' down-after, their election
# and the replica's promotion (a few hundred ms on loopback; an election that fails is retried after
# twice the failover timeout), one socket timeout for the pooled connections to the dead master, and
# scheduling slack for a loaded 2-core machine.
FAILOVER_BOUND_S = DOWN_AFTER_MS / 1000 + 2 * FAILOVER_TIMEOUT_MS / 1000 + SOCKET_TIMEOUT_S + 3.0
# Leases gone from the new master are back within one heartbeat interval + one socket timeout.
RETAKE_BOUND_S = LEASE_TTL_S / 3 + SOCKET_TIMEOUT_S + 1.0


# -- the URL names the topology -----------------------------------------------------------------


def test_redis_urls_name_their_topology() -> None:
    single = parse_redis_url("redis://:pw@10.0.0.5:6380/2")
    assert (single.kind, single.url) == ("single", "redis://:pw@10.0.0.5:6380/2")
    cluster = parse_redis_url("rediss+cluster://app:s%40cret@a.example:7000,b.example,[::1]:7002")
    assert (cluster.kind, cluster.tls, cluster.username, cluster.password) == ("cluster", True, "app", "s@cret")
    assert cluster.hosts == (("a.example", 7000), ("b.example", 6379), ("::1", 7002))
    sentinel = parse_redis_url("redis+sentinel://:pw@s1:26379,s2/mymaster/3?sentinel_auth=true")
    assert (sentinel.kind, sentinel.service, sentinel.db, sentinel.password) == ("sentinel", "mymaster", 3, "pw")
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379)) and sentinel.sentinel_auth


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "master's name"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://a:7000/1", "database 0"),
        ("redis+cluster://a:port", "not a number"),
        ("redis://127.0.0.1:6379/abc", "must be a number"),  # redis-py quietly took database 0
    ],
)
def test_a_malformed_topology_url_says_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_redis_url(url)


def test_every_key_of_a_tenant_lives_in_one_cluster_slot() -> None:
    """Every multi-key script touches one tenant's keys only, so it runs on one cluster node."""
    keys = KeyLayout("voxgate:").tenant("ten_4f2a")
    names = [getattr(keys, p) for p in ("leases", "reaped", "starts", "reservations", "reservation_expiry")]
    names += [
        keys.reserved,
        keys.settled,
        keys.since,
        keys.monitor("rtc_1"),
        keys.day("2026-03-14"),
        keys.month("2026-03"),
    ]
    assert {key_slot(n.encode()) for n in names} == {key_slot(b"ten_4f2a")}
    assert key_slot(KeyLayout("voxgate:").tenant("ten_other").leases.encode()) != key_slot(b"ten_4f2a")


# -- voxgate serve on a cluster and under Sentinel ----------------------------------------------


@pytest.fixture
async def fast_emulator():
    emulator = await start_emulator(tokens_limit=10**12, requests_limit=10**9)
    yield emulator
    await emulator.stop()


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    with redis_sentinel(sentinels=3) as setup:
        yield setup


async def open_session(gateway: GatewayProcess, tenant: TenantKey) -> websockets.ClientConnection:
    ws = await websockets.connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {tenant.secret}"})
    assert json.loads(await ws.recv())["type"] == "session.created"
    return ws


async def try_session(gateway: GatewayProcess, tenant: TenantKey) -> websockets.ClientConnection | int:
    """An open session, or the HTTP status it was refused with."""
    try:
        return await open_session(gateway, tenant)
    except InvalidStatus as refusal:
        return refusal.response.status_code


async def one_response(ws: websockets.ClientConnection) -> dict[str, object]:
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "response.done":
                return dict(event["response"])


async def ledger_rows(pool: asyncpg.Pool, tenant_id: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant_id))


@pytest.mark.e2e
async def test_serve_runs_on_a_redis_cluster(
    pg_dsn: str, pg_pool: asyncpg.Pool, fast_emulator, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cluster_url = request.getfixturevalue("redis_cluster_url")  # the session's 3-node cluster
    prefix = f"vgcl:{secrets.token_hex(4)}:"
    env = gateway_env(pg_dsn, cluster_url, fast_emulator.base_url, prefix, UPSTREAM_KEY)
    tenant = await make_tenant(pg_pool, "cluster")
    cluster = redis_client(RedisSettings(url=cluster_url, pool_size=4))
    leases = KeyLayout(prefix).tenant(tenant.tenant_id).leases
    try:
        async with gateway_process(env, tmp_path, "cluster-a") as gateway:
            assert (await gateway.readyz())["redis"] == "ok"
            sockets = [await open_session(gateway, tenant) for _ in range(3)]
            assert await cluster.zcard(leases) == 3
            done = await asyncio.gather(*(one_response(ws) for ws in sockets))
            assert all(r["status"] == "completed" for r in done)
            for ws in sockets:
                await ws.close()
            async with asyncio.timeout(10):
                while await cluster.zcard(leases) or await ledger_rows(pg_pool, tenant.tenant_id) < 3:
                    await asyncio.sleep(0.05)
            assert gateway.log_lines("Traceback") == 0
    finally:
        await cluster.aclose()


@pytest.mark.e2e
async def test_a_sentinel_failover_is_followed_and_lost_leases_are_taken_back(
    pg_dsn: str, pg_pool: asyncpg.Pool, fast_emulator, sentinel_setup: SentinelSetup, tmp_path: Path
) -> None:
    setup = sentinel_setup
    prefix = f"vgsn:{secrets.token_hex(4)}:"
    env = gateway_env(
        pg_dsn,
        setup.url,
        fast_emulator.base_url,
        prefix,
        UPSTREAM_KEY,
        VOXGATE_LEASE_TTL_SECONDS=str(LEASE_TTL_S),
        VOXGATE_REDIS_SOCKET_TIMEOUT_SECONDS=str(SOCKET_TIMEOUT_S),
        VOXGATE_REDIS_POOL_TIMEOUT_SECONDS=str(SOCKET_TIMEOUT_S),
    )
    tenant = await make_tenant(pg_pool, "sentinel")
    leases = KeyLayout(prefix).tenant(tenant.tenant_id).leases
    old_master = aioredis.Redis(host="127.0.0.1", port=setup.master_port)
    new_master = aioredis.Redis(host="127.0.0.1", port=setup.replica_port)
    try:
        async with gateway_process(env, tmp_path, "sentinel-a") as gateway:
            live = [await open_session(gateway, tenant) for _ in range(3)]
            assert await old_master.zcard(leases) == 3

            setup.kill_master()
            killed = time.monotonic()
            refusals: set[int] = set()
            while isinstance(admitted := await try_session(gateway, tenant), int):
                refusals.add(admitted)  # fail_closed: 503 while no master answers, then admitted again
                assert time.monotonic() - killed < FAILOVER_BOUND_S, "no admission through the promoted replica"
                await asyncio.sleep(0.2)
            assert refusals <= {503}
            recovered_s = time.monotonic() - killed
            assert setup.master_address() == ("127.0.0.1", setup.replica_port)

            # What a failover can lose: writes the old master acknowledged but had not replicated.
            # Simulate the worst case, every lease gone: the heartbeat takes the live ones back.
            await new_master.delete(leases)
            deleted = time.monotonic()
            async with asyncio.timeout(RETAKE_BOUND_S):
                while await new_master.zcard(leases) != 4:
                    await asyncio.sleep(0.05)
            retaken_s = time.monotonic() - deleted

            # The sessions that were live across the failover still run, and bill through the new master.
            assert (await one_response(live[0]))["status"] == "completed"
            for ws in (*live, admitted):
                await ws.close()
            async with asyncio.timeout(10):
                while await new_master.zcard(leases):
                    await asyncio.sleep(0.05)
    finally:
        await new_master.aclose()
        await old_master.aclose(close_connection_pool=True)
    print(f"sentinel failover: admitted again {recovered_s:.2f} s after SIGKILL; leases retaken in {retaken_s:.2f} s")
