"""One contract for every live-state backend: Redis (across replicas) and memory (one process).

Every test runs against one Redis, a 3-node Redis Cluster started on loopback
(tests/support/redis_cluster.py: every script's keys must share one slot) and memory (`replicas`
is parametrized). The Redis backends use the gateway's own pools (gateway/pools.py) with only
`POOL` connections (per node on the cluster), so the concurrency tests run far past the pool
size. Time is always the explicit `now`: nothing sleeps to wait for an expiry. Redis-only
behaviour (key layout, NOSCRIPT, reconnects) is in tests/test_livestate.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.livestate import Broadcast, LiveState, LiveStateBackend, MemoryLiveState, MemoryStore
from gateway.pools import RedisClient, redis_client
from gateway.settings import RedisSettings
from tests.conftest import REDIS_URL
from tests.support.livestate import T0, TTL, add_response, at, known_tenant, ledger_tenant, tenant
from tests.support.redis_cluster import redis_cluster_url  # noqa: F401 - the session's cluster, a fixture

Backend = LiveStateBackend
POOL = 8  # connections per Redis replica in these tests
BURST = 300  # concurrent callers, far past POOL


def small_pool(url: str = REDIS_URL) -> RedisClient:
    return redis_client(RedisSettings(url=url, pool_size=POOL, pool_timeout_seconds=10.0))


@pytest.fixture(params=["redis", "cluster", "memory"])
async def replicas(
    request: pytest.FixtureRequest, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[Backend, ...]]:
    """Two replicas sharing one state: two Redis clients (each its own pool) of one Redis or of a
    Redis Cluster, or one memory store. (`redis_client` is there so the session's keys are deleted
    at the end; the cluster goes away whole.)"""
    if request.param == "memory":
        store = MemoryStore()
        yield MemoryLiveState(store, "pod-a"), MemoryLiveState(store, "pod-b")
        return
    url = request.getfixturevalue("redis_cluster_url") if request.param == "cluster" else REDIS_URL
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    clients = [small_pool(url), small_pool(url)]
    states = [LiveState(c, prefix=prefix, instance_id=n) for c, n in zip(clients, ("pod-a", "pod-b"), strict=True)]
    for s in states:
        await s.load_scripts()
    yield tuple(states)
    for c in clients:
        await c.aclose()


@pytest.fixture
def state(replicas: tuple[Backend, ...]) -> LiveStateBackend:
    return replicas[0]


@pytest.fixture
def replica_b(replicas: tuple[Backend, ...]) -> LiveStateBackend:
    return replicas[1]


# -- past the pool size ---------------------------------------------------------------------


async def test_cap_holds_exactly_with_300_concurrent_acquires(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    results = await asyncio.gather(
        *((state if i % 2 else replica_b).acquire_session(t, f"s{i}", 37, TTL, T0) for i in range(BURST))
    )
    assert sum(r.granted for r in results) == 37
    assert max(r.active for r in results) == 37
    assert await state.active_sessions(t, T0) == 37
    released = await asyncio.gather(*(state.release_session(t, f"s{i}") for i in range(BURST)))
    assert sum(released) == 37
    assert await replica_b.active_sessions(t, T0) == 0


async def test_reserve_never_grants_beyond_the_limit_with_300_concurrent(state: Backend, replica_b: Backend) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "earlier", 100_000, T0)
    amounts = [10_000 + 1_000 * (i % 7) for i in range(BURST)]
    results = await asyncio.gather(
        *(
            (state if i % 2 else replica_b).reserve(t, f"r{i}", a, 1_600_000, None, T0 + 1, 60)
            for i, a in enumerate(amounts)
        )
    )
    granted = sum(a for a, r in zip(amounts, results, strict=True) if r.granted)
    assert 0 < granted <= 1_500_000
    assert 1_500_000 - granted < max(amounts)  # refused only when the next one truly did not fit
    st = await state.spend(t, T0 + 1)
    assert st.reserved_day == st.reserved_month == granted
    assert all(r.refused_by == "day" for r in results if not r.granted)


async def test_300_sessions_acquire_reserve_settle_release_concurrently(state: Backend, replica_b: Backend) -> None:
    """The whole life of 300 sessions at once, each waiting for a slot: no error, the cap holds at
    every moment, the counters equal the sum of what was settled, and no lease or hold is left."""
    t = await known_tenant(state, T0)
    cap = 50
    holding, most, refused = 0, 0, 0

    async def session(i: int) -> None:
        nonlocal holding, most, refused
        s = state if i % 2 else replica_b
        while not (lease := await s.acquire_session(t, f"s{i}", cap, TTL, T0)).granted:
            refused += 1
            await asyncio.sleep(0.002)
        assert lease.active <= cap
        holding += 1
        most = max(most, holding)
        assert (await s.reserve(t, f"resp{i}", 20_000, 10_000_000, None, T0, 60)).granted
        await asyncio.sleep(0)
        await s.settle(t, f"resp{i}", 7_000 + i, T0 + 1)  # below the hold, as an honest worst case is
        holding -= 1
        assert await s.release_session(t, f"s{i}")

    await asyncio.gather(*(session(i) for i in range(BURST)))
    st = await state.spend(t, T0 + 2)
    assert refused >= BURST - cap and most <= cap  # sessions waited for a slot; the cap was never passed
    assert (st.spent_day, st.spent_month) == (2_144_850, 2_144_850)  # 300 x 7,000 + (0 + 1 + ... + 299)
    assert (st.reserved_day, st.reserved_month) == (0, 0)
    assert await replica_b.active_sessions(t, T0 + 2) == 0
    redis = state.redis if isinstance(state, LiveState) else None
    if isinstance(redis, RedisCluster):  # at most POOL connections to each node
        assert all(len(node._connections) <= POOL for node in redis.get_nodes())
    elif redis is not None:  # the burst went through POOL connections per replica, waiting
        pool = redis.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= POOL


# -- concurrency leases --------------------------------------------------------------------


async def test_two_replicas_share_the_cap(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    results = await asyncio.gather(
        *(state.acquire_session(t, f"a{i}", 5, TTL, T0) for i in range(20)),
        *(replica_b.acquire_session(t, f"b{i}", 5, TTL, T0) for i in range(20)),
    )
    assert sum(r.granted for r in results) == 5
    assert await replica_b.active_sessions(t, T0) == 5
    # one replica releasing frees a slot for the other
    held = [
        s
        for s, r in zip([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)], results, strict=True)
        if r.granted
    ]
    await state.release_session(t, held[0])
    assert (await replica_b.acquire_session(t, "b-late", 5, TTL, T0 + 1)).granted


async def test_reacquiring_a_held_lease_renews_it(state: Backend) -> None:
    t = tenant()
    assert (await state.acquire_session(t, "s1", 1, TTL, T0)).granted
    again = await state.acquire_session(t, "s1", 1, TTL, T0 + 20)
    assert again.granted and again.active == 1
    assert await state.active_sessions(t, T0 + TTL + 5) == 1  # renewed to T0 + 50


async def test_no_limit_still_counts_leases(state: Backend) -> None:
    t = tenant()
    for i in range(3):
        assert (await state.acquire_session(t, f"s{i}", None, TTL, T0)).granted
    assert await state.active_sessions(t, T0) == 3


async def test_dead_replica_is_reaped_after_ttl_and_capacity_comes_back(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    for i in range(2):
        assert (await state.acquire_session(t, f"a{i}", 4, TTL, T0)).granted
        assert (await replica_b.acquire_session(t, f"b{i}", 4, TTL, T0)).granted
    assert not (await state.acquire_session(t, "a-extra", 4, TTL, T0 + 1)).granted
    # replica A keeps heartbeating; replica B has died
    assert await state.heartbeat([(t, "a0"), (t, "a1")], TTL, T0 + 20) == []
    assert await state.reap_expired(T0 + TTL - 0.5) == []
    assert await state.active_sessions(t, T0 + TTL - 0.5) == 4

    reaped = await state.reap_expired(T0 + TTL)  # B's leases expired at T0 + ttl
    assert sorted(reaped) == [(t, "b0"), (t, "b1")]
    assert await state.reap_expired(T0 + TTL + 1) == []  # reported once
    assert await state.active_sessions(t, T0 + TTL) == 2
    assert (await state.acquire_session(t, "a2", 4, TTL, T0 + TTL)).granted


async def test_leases_reaped_inside_acquire_still_reach_the_reaper(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    assert (await replica_b.acquire_session(t, "b0", 1, TTL, T0)).granted
    # B dies; A's acquire after the ttl reaps B's lease on the spot...
    assert (await state.acquire_session(t, "a0", 1, TTL, T0 + TTL + 1)).granted
    # ...and the periodic reaper (on any replica) still reports it, so its row gets ended
    assert await replica_b.reap_expired(T0 + TTL + 2) == [(t, "b0")]


async def test_reaper_covers_every_tenant(state: Backend) -> None:
    tenants = [tenant() for _ in range(3)]
    for t in tenants:
        await state.acquire_session(t, "dead", None, TTL, T0)
        await state.acquire_session(t, "alive", None, TTL, T0)
    await state.heartbeat([(t, "alive") for t in tenants], TTL, T0 + 25)
    reaped = await state.reap_expired(T0 + TTL + 1)
    assert sorted(reaped) == sorted((t, "dead") for t in tenants)


async def test_heartbeat_never_resurrects_a_released_lease(state: Backend) -> None:
    t1, t2 = tenant(), tenant()
    await state.acquire_session(t1, "s1", None, TTL, T0)
    await state.acquire_session(t2, "s2", None, TTL, T0)
    await state.release_session(t2, "s2")
    lost = await state.heartbeat([(t1, "s1"), (t2, "s2")], TTL, T0 + 10)
    assert lost == [(t2, "s2")]
    assert await state.active_sessions(t2, T0 + 10) == 0
    assert await state.active_sessions(t1, T0 + TTL + 5) == 1  # renewed until T0 + 40


async def test_release_is_idempotent(state: Backend) -> None:
    t = tenant()
    await state.acquire_session(t, "s1", 2, TTL, T0)
    assert await state.release_session(t, "s1") is True
    assert await state.release_session(t, "s1") is False
    assert await state.release_session(t, "never-held") is False
    assert await state.active_sessions(t, T0) == 0
    assert await state.reap_expired(T0 + 2 * TTL) == []


async def test_tenant_ids_with_braces_are_refused(state: Backend) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        await state.acquire_session("a{b}", "s", 1, TTL, T0)


# -- call monitor claims --------------------------------------------------------------------


async def test_one_replica_monitors_a_call_and_only_it_renews_or_releases(state: Backend, replica_b: Backend) -> None:
    t, call = tenant(), f"rtc_{secrets.token_hex(4)}"
    assert await state.claim_monitor(t, call, TTL, T0)
    assert not await replica_b.claim_monitor(t, call, TTL, T0 + 1)  # pod-a holds it
    assert await state.claim_monitor(t, call, TTL, T0 + 2)  # claiming what we hold renews it
    assert not await replica_b.renew_monitor(t, call, TTL, T0 + 3)
    assert not await replica_b.release_monitor(t, call)
    assert await state.renew_monitor(t, call, TTL, T0 + 4)
    assert not await replica_b.claim_monitor(t, call, TTL, T0 + 4 + TTL - 0.5)  # renewed: still pod-a's
    assert await state.release_monitor(t, call)
    assert not await state.release_monitor(t, call)  # idempotent
    assert not await state.renew_monitor(t, call, TTL, T0 + 5)  # released: nothing to renew
    assert await replica_b.claim_monitor(t, call, TTL, T0 + 5)


async def test_a_draining_replica_sees_when_another_holds_the_call(state: Backend, replica_b: Backend) -> None:
    t, call = tenant(), f"rtc_{secrets.token_hex(4)}"
    assert not await state.monitor_taken(t, call, T0)  # nobody holds it
    assert await state.claim_monitor(t, call, TTL, T0)
    assert not await state.monitor_taken(t, call, T0 + 1)  # our own claim is not another's
    assert await replica_b.monitor_taken(t, call, T0 + 1)
    assert await state.release_monitor(t, call)  # the drain gives it back...
    assert not await state.monitor_taken(t, call, T0 + 2)
    assert await replica_b.claim_monitor(t, call, TTL, T0 + 2)  # ...and the successor takes it
    assert await state.monitor_taken(t, call, T0 + 3)
    assert not await state.monitor_taken(t, call, T0 + 2 + TTL + 1)  # a lapsed claim holds nothing


async def test_a_dead_monitors_claim_lapses_and_another_replica_takes_the_call(
    state: Backend, replica_b: Backend
) -> None:
    t, call, other = tenant(), f"rtc_{secrets.token_hex(4)}", f"rtc_{secrets.token_hex(4)}"
    assert await state.claim_monitor(t, call, TTL, T0)
    assert await state.claim_monitor(t, other, TTL, T0)  # claims are per call
    assert not await replica_b.claim_monitor(t, call, TTL, T0 + TTL - 0.001)
    assert await replica_b.claim_monitor(t, call, TTL, T0 + TTL)  # pod-a stopped renewing: lapsed
    assert not await state.renew_monitor(t, call, TTL, T0 + TTL + 1)  # the old owner learns it lost it
    assert not await state.release_monitor(t, call)  # and cannot drop the new owner's claim
    assert not await replica_b.claim_monitor(t, other, TTL, T0 + 1)
    assert not await state.renew_monitor(t, other, TTL, T0 + TTL)  # lapsed, even for its owner


# -- session start rate --------------------------------------------------------------------


async def test_start_rate_is_exact_per_sliding_minute(state: Backend) -> None:
    t = tenant()
    for i in range(5):
        assert (await state.take_start(t, 5, T0 + i)).allowed
    refused = await state.take_start(t, 5, T0 + 10)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(50.0)
    assert not (await state.take_start(t, 5, T0 + 59.9)).allowed
    assert (await state.take_start(t, 5, T0 + 60)).allowed  # the start at T0 left the window
    again = await state.take_start(t, 5, T0 + 60.5)
    assert not again.allowed
    assert again.retry_after_s == pytest.approx(0.5)  # the start at T0 + 1 leaves at T0 + 61


async def test_start_rate_is_shared_by_replicas_under_concurrency(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    results = await asyncio.gather(
        *(state.take_start(t, 10, T0) for _ in range(25)), *(replica_b.take_start(t, 10, T0) for _ in range(25))
    )
    assert sum(r.allowed for r in results) == 10
    assert all(r.retry_after_s == pytest.approx(60.0) for r in results if not r.allowed)


# -- budgets -------------------------------------------------------------------------------


async def test_monthly_limit_also_binds(state: Backend) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "x", 900, T0)
    r = await state.reserve(t, "r1", 200, 10_000, 1_000, T0, 60)
    assert not r.granted and r.refused_by == "month"
    assert (await state.reserve(t, "r2", 100, 10_000, 1_000, T0, 60)).granted


async def test_exhausted_budget_refuses_even_zero(state: Backend) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "x", 1_000, T0)
    assert not (await state.reserve(t, "r", 0, 999, None, T0, 60)).granted


async def test_a_forced_reservation_is_held_even_when_it_does_not_fit(state: Backend) -> None:
    # A response server VAD already started upstream: recorded, and reported as not fitting.
    t = await known_tenant(state, T0)
    await state.settle(t, "x", 900, T0)
    r = await state.reserve(t, "vad_1", 500, 1_000, None, T0, 60, forced=True)
    assert (r.granted, r.refused_by, r.state.reserved_day) == (False, "day", 500)
    assert not (await state.reserve(t, "r2", 0, 1_000, None, T0, 60)).granted  # it holds the budget
    fitting = await state.reserve(t, "vad_2", 10, None, None, T0, 60, forced=True)
    assert (fitting.granted, fitting.state.reserved_day) == (True, 510)
    st = await state.settle(t, "vad_1", 300, T0 + 1)
    assert (st.spent_day, st.reserved_day) == (1_200, 10)


async def test_settle_is_idempotent_and_releases_the_hold(state: Backend) -> None:
    t = await known_tenant(state, T0)
    r = await state.reserve(t, "resp_1", 5_000, 1_000_000, None, T0, 60)
    assert r.granted and r.state.reserved_day == 5_000
    again = await state.reserve(t, "resp_1", 5_000, 1_000_000, None, T0, 60)
    assert again.granted and again.state.reserved_day == 5_000  # re-reserving is a no-op
    st = await state.settle(t, "resp_1", 3_210, T0 + 5)
    assert (st.spent_day, st.spent_month, st.reserved_day) == (3_210, 3_210, 0)
    st = await state.settle(t, "resp_1", 3_210, T0 + 6)
    assert (st.spent_day, st.spent_month, st.reserved_day) == (3_210, 3_210, 0)
    assert (await state.reserve(t, "resp_1", 1, None, None, T0 + 7, 60)).refused_by == "settled"
    # a settle without a reservation (e.g. transcription) just adds, once
    await state.settle(t, "tr_1", 90, T0 + 8)
    st = await state.settle(t, "tr_1", 90, T0 + 9)
    assert st.spent_day == 3_300


async def test_amounts_stay_exact_at_large_values(state: Backend) -> None:
    t = await known_tenant(state, T0)
    big = 9_000_000_000_000_123  # 9 billion USD and change
    assert (await state.reserve(t, "r", big, None, None, T0, 60)).state.reserved_day == big
    st = await state.settle(t, "r", big, T0)
    assert (st.spent_month, st.reserved_month) == (big, 0)


async def test_reservations_of_a_dead_holder_expire(state: Backend, replica_b: Backend) -> None:
    t = await known_tenant(state, T0)
    assert (await replica_b.reserve(t, "held-by-b", 800, 1_000, None, T0, 30)).granted
    assert not (await state.reserve(t, "r-a", 300, 1_000, None, T0 + 10, 30)).granted
    # B dies and never settles: its hold expires after its ttl
    r = await state.reserve(t, "r-a", 300, 1_000, None, T0 + 30, 30)
    assert r.granted and r.state.reserved_day == 300
    # the periodic reaper also frees holds, for tenants nobody is looking at
    assert (await state.reserve(t, "r-b", 100, 1_000, None, T0 + 31, 30)).granted
    await state.reap_expired(T0 + 70)
    assert (await state.spend(t, T0 + 70)).reserved_day == 0


async def test_day_and_month_rollover_use_new_counters(state: Backend) -> None:
    t = tenant()
    assert (await state.spend(t, at("2026-01-01T00:00:00"))).known
    before = at("2026-01-31T23:59:00")
    st = await state.settle(t, "jan", 1_000, before)
    assert (st.day, st.month, st.spent_day, st.spent_month) == ("2026-01-31", "2026-01", 1_000, 1_000)
    assert not (await state.reserve(t, "r1", 1, 1_000, None, before, 3600)).granted
    assert (await state.reserve(t, "r2", 200, None, None, before, 3600)).granted

    after = at("2026-02-01T00:00:30")
    st = await state.spend(t, after)
    assert (st.day, st.month, st.spent_day, st.spent_month, st.known) == ("2026-02-01", "2026-02", 0, 0, True)
    assert st.reserved_day == 200  # a live hold counts against the window it will be spent in
    st = await state.settle(t, "r2", 150, after)
    assert (st.spent_day, st.spent_month, st.reserved_month) == (150, 150, 0)
    assert (await state.spend(t, at("2026-02-02T08:00:00"))).spent_day == 0
    assert (await state.spend(t, at("2026-02-02T08:00:00"))).spent_month == 150


# -- rebuild from the Postgres ledger ------------------------------------------------------


async def test_forget_spend_recovers_a_settle_that_never_reached_redis(state: Backend, pg_pool: asyncpg.Pool) -> None:
    t, s = await ledger_tenant(pg_pool)
    assert (await state.spend(t, T0 - 7200)).known is False
    assert (await state.rebuild_spend(pg_pool, t, T0 - 7200)).known
    await add_response(pg_pool, t, s, T0 - 3600, 1_000)
    await state.settle(t, "r1", 1_000, T0 - 3600)
    await add_response(pg_pool, t, s, T0 - 60, 250)  # metered into the ledger while Redis was down
    assert (await state.spend(t, T0)).spent_day == 1_000
    await state.forget_spend(t, T0)
    assert not (await state.spend(t, T0)).known
    st = await state.rebuild_spend(pg_pool, t, T0)
    assert (st.spent_day, st.spent_month, st.known) == (1_250, 1_250, True)


async def test_windows_starting_after_since_are_known_without_a_rebuild(state: Backend) -> None:
    t = tenant()
    await state.spend(t, at("2026-03-14T09:00:00"))  # since = 09:00, after the day began: unknown
    assert not (await state.spend(t, at("2026-03-14T23:00:00"))).known
    st = await state.spend(t, at("2026-03-15T00:00:01"))  # the day is complete in Redis...
    assert not st.known  # ...but the month still lacks its first 13 days
    st = await state.spend(t, at("2026-04-01T00:00:01"))
    assert st.known


async def test_a_limited_reservation_waits_for_unknown_counters_to_be_rebuilt(
    state: Backend, pg_pool: asyncpg.Pool
) -> None:
    t, s = await ledger_tenant(pg_pool)
    await add_response(pg_pool, t, s, T0 - 600, 900)  # spent today, before the counters existed
    r = await state.reserve(t, "r1", 200, 1_000, None, T0, 60)
    assert (r.granted, r.refused_by, r.state.reserved_day) == (False, "unknown", 0)  # nothing held
    forced = await state.reserve(t, "vad1", 200, None, 1_000, T0, 60, forced=True)
    assert (forced.granted, forced.refused_by, forced.state.reserved_day) == (False, "unknown", 0)
    assert (await state.reserve(t, "free", 50, None, None, T0, 60)).granted  # no limit: nothing to check
    assert (await state.rebuild_spend(pg_pool, t, T0)).spent_day == 900
    again = await state.reserve(t, "r1", 200, 1_000, None, T0, 60)
    assert (again.granted, again.refused_by) == (False, "day")  # 900 + 50 held + 200 > 1,000
    assert (await state.reserve(t, "r2", 50, 1_000, None, T0, 60)).granted


async def test_a_reservation_survives_forget_and_its_settle_adds_once(state: Backend, pg_pool: asyncpg.Pool) -> None:
    t, s = await ledger_tenant(pg_pool)
    assert (await state.rebuild_spend(pg_pool, t, T0 - 7200)).known
    assert (await state.reserve(t, "resp1", 5_000, 100_000, None, T0 - 7200, 7200)).granted
    await state.forget_spend(t, T0 - 60)
    st = await state.spend(t, T0 - 60)
    assert (st.known, st.reserved_day) == (False, 5_000)  # the hold is kept
    await state.settle(t, "resp1", 0, T0 - 59)  # what the repair loop does for a settle that failed
    await add_response(pg_pool, t, s, T0 - 120, 3_000)  # the real cost, in the ledger
    st = await state.rebuild_spend(pg_pool, t, T0)
    assert (st.spent_day, st.reserved_day, st.known) == (3_000, 0, True)
    assert (await state.settle(t, "resp1", 3_000, T0 + 1)).spent_day == 3_000  # a late retry adds nothing


# -- broadcasts ----------------------------------------------------------------------------


async def test_publish_reaches_other_replicas_with_the_origin(state: Backend, replica_b: Backend) -> None:
    ready = asyncio.Event()
    received: list[Broadcast] = []

    async def listen() -> None:
        async for event in replica_b.subscribe(ready):
            received.append(event)
            if len(received) == 2:
                return

    task = asyncio.create_task(listen())
    async with asyncio.timeout(5):
        await ready.wait()
        assert await state.publish("budget_exhausted", "ten_x", {"window": "day"}) >= 1
        await replica_b.publish("policy_changed", "ten_y")
        await task
    assert received == [
        Broadcast("budget_exhausted", "ten_x", {"window": "day"}, "pod-a"),
        Broadcast("policy_changed", "ten_y", {}, "pod-b"),
    ]


# -- upstream headroom ---------------------------------------------------------------------


async def test_headroom_is_the_latest_snapshot_until_it_goes_stale(state: Backend, replica_b: Backend) -> None:
    assert await state.headroom(T0) is None
    await replica_b.record_headroom(40_000, 1_200, 12.5, T0)
    h = await state.headroom(T0 + 5)
    assert h is not None
    assert (h.tokens_limit, h.tokens_remaining, h.reset_seconds, h.observed_at) == (40_000, 1_200, 12.5, T0)
    assert h.retry_after_s(T0 + 5) == pytest.approx(7.5)
    await state.record_headroom(40_000, 30_000, 1.0, T0 - 1)  # an older snapshot arriving late: ignored
    assert (await state.headroom(T0 + 5)).tokens_remaining == 1_200  # type: ignore[union-attr]
    assert await state.headroom(T0 + 12.5) is None  # older than its reset time


# -- admission's read ----------------------------------------------------------------------


async def test_tenant_view_reads_spend_leases_and_headroom_together(state: Backend, replica_b: Backend) -> None:
    t = await known_tenant(state, T0)
    empty = await state.tenant_view(t, T0)
    assert (empty.spend.spent_day, empty.spend.reserved_day, empty.active_sessions, empty.headroom) == (0, 0, 0, None)
    assert (await replica_b.reserve(t, "r1", 500, 10_000, None, T0, TTL)).granted
    assert (await replica_b.reserve(t, "r2", 300, 10_000, None, T0, TTL)).granted
    await replica_b.settle(t, "r1", 400, T0)
    for n in range(3):
        assert (await replica_b.acquire_session(t, f"s{n}", None, TTL, T0 + n)).granted
    await replica_b.record_headroom(40_000, 1_200, 12.5, T0)
    view = await state.tenant_view(t, T0 + 1)
    assert (view.spend.known, view.spend.spent_day, view.spend.spent_month, view.spend.reserved_day) == (
        True,
        400,
        400,
        300,
    )
    assert view.active_sessions == 3
    assert view.headroom is not None and (view.headroom.tokens_remaining, view.headroom.observed_at) == (1_200, T0)
    # The same rules as the single calls: expired leases and holds are not counted, stale headroom is None.
    later = await state.tenant_view(t, T0 + TTL + 0.5)  # s0 (until T0 + TTL) and r2 (same) have expired
    assert (later.active_sessions, later.headroom, later.spend.reserved_day, later.spend.spent_day) == (2, None, 0, 400)


# -- per-model concurrency caps (max_concurrent_sessions_per_model) -----------------------------


async def test_a_model_cap_holds_exactly_across_replicas_and_other_models_are_unaffected(
    state: Backend, replica_b: Backend
) -> None:
    t = tenant()
    results = await asyncio.gather(
        *(
            (state if i % 2 else replica_b).acquire_session(t, f"l{i}", 100, TTL, T0, model="gpt-live-1", model_limit=7)
            for i in range(BURST)
        )
    )
    granted = [i for i, r in enumerate(results) if r.granted]
    assert len(granted) == 7
    assert max(r.model_active for r in results) == 7
    assert {r.refused_by for r in results if not r.granted} == {"model"}
    assert await replica_b.active_model_sessions(t, "gpt-live-1", T0) == 7
    # another model has its own count; the tenant-wide cap still counts everything
    other = [
        await state.acquire_session(t, f"r{i}", 20, TTL, T0, model="gpt-realtime", model_limit=5) for i in range(4)
    ]
    assert all(r.granted for r in other) and other[-1].model_active == 4
    assert await state.active_sessions(t, T0) == 11
    capped = await state.acquire_session(t, "r-over", 11, TTL, T0, model="gpt-realtime", model_limit=5)
    assert (capped.granted, capped.refused_by, capped.active) == (False, "tenant", 11)
    # releasing one of the model's sessions frees exactly one slot of that model, on any replica
    assert await state.release_session(t, f"l{granted[0]}")
    assert await state.active_model_sessions(t, "gpt-live-1", T0) == 6
    late = await replica_b.acquire_session(t, "l-late", None, TTL, T0 + 1, model="gpt-live-1", model_limit=7)
    assert (late.granted, late.model_active) == (True, 7)
    assert not (await state.acquire_session(t, "l-more", None, TTL, T0 + 1, model="gpt-live-1", model_limit=7)).granted
    # all released: no count left behind
    await asyncio.gather(
        *(state.release_session(t, f"l{i}") for i in range(BURST)),
        *(state.release_session(t, f"r{i}") for i in range(4)),
        replica_b.release_session(t, "l-late"),
    )
    assert await state.active_sessions(t, T0 + 1) == 0
    assert await state.active_model_sessions(t, "gpt-live-1", T0 + 1) == 0
    assert await state.active_model_sessions(t, "gpt-realtime", T0 + 1) == 0


async def test_a_held_lease_is_counted_under_its_model_once_the_model_is_known(state: Backend) -> None:
    """A GPT-Live WebSocket: the lease is taken at the upgrade, the model arrives in `session.start`."""
    t = tenant()
    for i in range(3):
        assert (await state.acquire_session(t, f"s{i}", 10, TTL, T0)).granted
    assert await state.active_model_sessions(t, "gpt-live-1", T0) == 0
    for i in range(2):
        named = await state.acquire_session(t, f"s{i}", None, TTL, T0, model="gpt-live-1", model_limit=2)
        assert (named.granted, named.model_active) == (True, i + 1)
    again = await state.acquire_session(t, "s1", None, TTL, T0, model="gpt-live-1", model_limit=2)
    assert (again.granted, again.model_active) == (True, 2)  # naming its own model again is a renewal
    full = await state.acquire_session(t, "s2", None, TTL, T0, model="gpt-live-1", model_limit=2)
    assert (full.granted, full.refused_by, full.model_active) == (False, "model", 2)
    assert await state.active_sessions(t, T0) == 3  # the refused one still holds its tenant lease
    # renewing without a model keeps the model; the uncapped take-back of a lapsed lease may name it
    assert (await state.acquire_session(t, "s0", None, TTL, T0 + 1)).granted
    assert await state.active_model_sessions(t, "gpt-live-1", T0 + 1) == 2


async def test_expired_leases_leave_their_models_count(state: Backend, replica_b: Backend) -> None:
    t = tenant()
    assert (await state.acquire_session(t, "a0", None, TTL, T0, model="gpt-live-1", model_limit=2)).granted
    assert (await replica_b.acquire_session(t, "b0", None, TTL, T0, model="gpt-live-1", model_limit=2)).granted
    assert not (await state.acquire_session(t, "a1", None, TTL, T0, model="gpt-live-1", model_limit=2)).granted
    # A heartbeats; B died: once its lease expires its slot of the model comes back
    assert await state.heartbeat([(t, "a0")], TTL, T0 + 20) == []
    assert await state.active_model_sessions(t, "gpt-live-1", T0 + TTL - 1) == 2
    assert await state.active_model_sessions(t, "gpt-live-1", T0 + TTL) == 1
    assert (await state.acquire_session(t, "a1", None, TTL, T0 + TTL, model="gpt-live-1", model_limit=2)).granted
    assert await replica_b.reap_expired(T0 + TTL + 1) == [(t, "b0")]
    assert await state.active_model_sessions(t, "gpt-live-1", T0 + 2 * TTL + 25) == 0  # A stopped beating too
    assert sorted(await state.reap_expired(T0 + 2 * TTL + 25)) == [(t, "a0"), (t, "a1")]
