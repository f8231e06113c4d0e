"""Redis-only behaviour of the live state: key layout, flushes, NOSCRIPT, reconnects.

What every backend must do is in tests/test_livestate_contract.py (run over Redis and memory).
Each test gets its own key prefix under the session's `redis_prefix`; time is always the explicit
`now`, so nothing here sleeps to wait for an expiry.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from gateway.livestate import RESYNC, Broadcast, LiveState
from gateway.livestate.broadcast import Bus
from gateway.livestate.scripts import MAX_BATCH
from gateway.pools import redis_client as pooled_client
from gateway.settings import RedisSettings
from tests.conftest import REDIS_URL
from tests.support.clock import FakeClock
from tests.support.livestate import T0, TTL, add_response, add_transcription, known_tenant, ledger_tenant, tenant


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}{secrets.token_hex(3)}:"


@pytest.fixture
async def other_client() -> AsyncIterator[aioredis.Redis]:
    """A second, separate connection pool: the other replica."""
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def state(redis_client: aioredis.Redis, prefix: str) -> LiveState:
    s = LiveState(redis_client, prefix=prefix, instance_id="pod-a")
    await s.load_scripts()
    return s


@pytest.fixture
async def replica_b(other_client: aioredis.Redis, prefix: str) -> LiveState:
    s = LiveState(other_client, prefix=prefix, instance_id="pod-b")
    await s.load_scripts()
    return s


# -- concurrency leases ---------------------------------------------------------------------


async def test_idle_tenants_leave_the_reaper_index(state: LiveState, redis_client: aioredis.Redis) -> None:
    t = tenant()
    await state.acquire_session(t, "s1", None, TTL, T0)
    await state.release_session(t, "s1")
    await state.reap_expired(T0 + 60)
    assert await redis_client.zscore(state.keys.tenant_index, t) is not None  # recently active: kept
    await state.reap_expired(T0 + 7200)
    assert await redis_client.zscore(state.keys.tenant_index, t) is None


# -- budgets --------------------------------------------------------------------------------


# -- rebuild from the Postgres ledger -------------------------------------------------------


async def flush_tenant(redis: aioredis.Redis, state: LiveState, tenant_id: str) -> None:
    base = state.keys.tenant(tenant_id).base
    keys = [k async for k in redis.scan_iter(match=base + "*")]
    assert keys
    await redis.delete(*keys)


async def test_rebuild_spend_from_the_ledger_after_a_flush(
    state: LiveState, replica_b: LiveState, redis_client: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    t, s = await ledger_tenant(pg_pool)
    await add_response(pg_pool, t, s, T0 - 3600, 1_000)  # today
    await add_response(pg_pool, t, s, T0 - 60, 2_000)  # today
    await add_transcription(pg_pool, t, s, T0 - 30, 300)  # today
    await add_response(pg_pool, t, s, T0 - 5 * 86400, 500)  # earlier this month
    await add_response(pg_pool, t, s, T0 - 20 * 86400, 999)  # last month: not counted

    assert not (await state.spend(t, T0)).known  # first use: Redis has no history
    st = await state.rebuild_spend(pg_pool, t, T0)
    assert (st.spent_day, st.spent_month, st.known) == (3_300, 3_800, True)
    assert (await state.rebuild_spend(pg_pool, t, T0)).spent_day == 3_300  # known: nothing added again

    await flush_tenant(redis_client, state, t)
    t1 = T0 + 120
    assert not (await state.spend(t, t1)).known
    # a response settles while the counters are still unknown (its ledger row is after `since`)
    await add_response(pg_pool, t, s, t1 + 1, 700)
    assert (await replica_b.settle(t, "resp_late", 700, t1 + 1)).spent_day == 700
    # two replicas rebuild at once: history is added once, and the late settle is kept
    a, b = await asyncio.gather(state.rebuild_spend(pg_pool, t, t1 + 2), replica_b.rebuild_spend(pg_pool, t, t1 + 2))
    assert (a.spent_day, a.spent_month, a.known) == (4_000, 4_500, True)
    assert (b.spent_day, b.spent_month) == (4_000, 4_500)
    assert (await state.settle(t, "resp_next", 10, t1 + 3)).spent_day == 4_010


# -- broadcasts -----------------------------------------------------------------------------


async def drop_connection(redis_client: aioredis.Redis, name: str) -> None:
    """Kill the server side of every connection named `name`."""
    for c in await redis_client.client_list():
        if c.get("name") == name:
            await redis_client.client_kill_filter(_id=c["id"])


async def test_subscribe_is_cancellable_and_resubscribes_after_its_backoff_on_the_clock(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    name = f"livestate-test-{secrets.token_hex(4)}"
    client = aioredis.from_url(REDIS_URL, client_name=name)
    clock = FakeClock()
    # The jitter at its least: each wait is half the backoff (0.5 s, then 1 s, ...).
    sub = Bus(client, f"{prefix}bus", "pod-c", backoff_s=(1.0, 8.0), clock=clock, jitter=lambda: 0.0)
    pub = Bus(redis_client, f"{prefix}bus", "pod-a")
    ready = asyncio.Event()
    received: list[Broadcast] = []

    async def listen() -> None:
        async for event in sub.subscribe(ready):
            received.append(event)

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
            await drop_connection(redis_client, name)  # only this subscriber's
            while clock.sleepers == 0:  # it saw the connection go and waits out its backoff
                await asyncio.sleep(0.005)
            assert not ready.is_set()
            await clock.advance(0.49)
            assert (clock.sleepers, ready.is_set()) == (1, False)  # not a moment early
            await clock.advance(0.01)
            await ready.wait()
            while not any(e.kind == RESYNC for e in received):  # told to re-check what it may have missed
                await asyncio.sleep(0.005)
            await pub.publish("budget_exhausted", "ten_z")
            while not any(e.kind == "budget_exhausted" for e in received):
                await asyncio.sleep(0.005)
        assert [e.kind for e in received] == [RESYNC, "budget_exhausted"]
        assert received[0] == Broadcast(RESYNC, "", {}, "pod-c")
        assert received[1] == Broadcast("budget_exhausted", "ten_z", {}, "pod-a")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()


async def test_a_live_states_broadcasts_reconnect_on_its_clock(prefix: str, redis_client: aioredis.Redis) -> None:
    name = f"livestate-test-{secrets.token_hex(4)}"
    client = aioredis.from_url(REDIS_URL, client_name=name)
    clock = FakeClock()
    state = LiveState(client, prefix, "pod-d", clock=clock)
    ready = asyncio.Event()

    async def listen() -> None:
        async for _ in state.subscribe(ready):
            pass

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
            ready.clear()
            await drop_connection(redis_client, name)
            while clock.sleepers == 0:  # the backoff waits on the state's clock, not the wall
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # longer than the whole first backoff (at most 0.1 s) in real time
            assert not ready.is_set()
            await clock.advance(0.1)
            await ready.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()


# -- scripts --------------------------------------------------------------------------------


async def test_scripts_survive_script_flush(state: LiveState, redis_client: aioredis.Redis) -> None:
    t = await known_tenant(state, T0)
    await redis_client.script_flush()
    assert (await state.acquire_session(t, "s1", 2, TTL, T0)).granted  # pipelined path
    await redis_client.script_flush()
    assert await state.heartbeat([(t, "s1")], TTL, T0 + 1) == []
    await redis_client.script_flush()
    assert (await state.reserve(t, "r1", 10, 100, None, T0, 60)).granted
    await redis_client.script_flush()
    assert (await state.settle(t, "r1", 7, T0)).spent_day == 7
    await redis_client.script_flush()
    assert (await state.take_start(t, 1, T0)).allowed


async def test_calls_made_in_one_loop_turn_share_one_round_trip(
    prefix: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/live-state.md, "Calls share round trips": 300 sessions' calls take one round trip, on one connection."""
    client = pooled_client(RedisSettings(url=REDIS_URL, pool_size=2, pool_timeout_seconds=0.5))
    try:
        state = LiveState(client, prefix, "pod-a")
        await state.load_scripts()
        t = tenant()
        pool = client.connection_pool
        taken = 0
        ours: set[int] = set()  # this client's connections: the tests' shared loop may run other clients
        get_connection = pool.get_connection

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal taken
            taken += 1
            connection = await get_connection(*args, **kwargs)
            ours.add(id(connection))
            return connection

        pool.get_connection = counted  # type: ignore[method-assign]
        sent = 0  # round trips: every batch is one write of packed commands
        send_packed_command = Connection.send_packed_command

        async def counted_send(self: Connection, *args: object, **kwargs: object) -> None:
            nonlocal sent
            sent += id(self) in ours
            await send_packed_command(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Connection, "send_packed_command", counted_send)
        leases = await asyncio.gather(*(state.acquire_session(t, f"s{n}", 250, TTL, T0) for n in range(300)))
        assert MAX_BATCH >= 600 and sent == 1  # each acquire is two commands (index touch + lease): 600 in one
        assert sum(lease.granted for lease in leases) == 250  # ...and each script is still atomic: the cap holds
        views = await asyncio.gather(*(state.tenant_view(t, T0) for _ in range(300)))
        assert sent == 2 and {v.active_sessions for v in views} == {250}
        assert taken == 1  # both round trips on the one connection the runner holds
    finally:
        await client.aclose()
