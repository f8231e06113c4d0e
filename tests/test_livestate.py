"""Live state across replicas, against real Redis (and Postgres for rebuilds).

Each test gets its own key prefix under the session's `redis_prefix`; time is always the explicit
`now`, so nothing here sleeps to wait for an expiry.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.livestate import RESYNC, Broadcast, LiveState
from gateway.livestate.keys import BudgetWindows
from gateway.storage.tenants import TenantDirectory
from tests.conftest import REDIS_URL

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()  # a Saturday noon, mid-month
TTL = 30.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


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


def tenant() -> str:
    return f"ten_{secrets.token_hex(4)}"


# -- concurrency leases ---------------------------------------------------------------------


async def test_concurrency_cap_holds_under_50_concurrent_acquires(state: LiveState) -> None:
    t = tenant()
    results = await asyncio.gather(*(state.acquire_session(t, f"s{i}", 7, TTL, T0) for i in range(50)))
    assert sum(r.granted for r in results) == 7
    assert max(r.active for r in results) == 7
    assert await state.active_sessions(t, T0) == 7


async def test_two_replicas_share_the_cap(state: LiveState, replica_b: LiveState) -> None:
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


async def test_reacquiring_a_held_lease_renews_it(state: LiveState) -> None:
    t = tenant()
    assert (await state.acquire_session(t, "s1", 1, TTL, T0)).granted
    again = await state.acquire_session(t, "s1", 1, TTL, T0 + 20)
    assert again.granted and again.active == 1
    assert await state.active_sessions(t, T0 + TTL + 5) == 1  # renewed to T0 + 50


async def test_no_limit_still_counts_leases(state: LiveState) -> None:
    t = tenant()
    for i in range(3):
        assert (await state.acquire_session(t, f"s{i}", None, TTL, T0)).granted
    assert await state.active_sessions(t, T0) == 3


async def test_dead_replica_is_reaped_after_ttl_and_capacity_comes_back(state: LiveState, replica_b: LiveState) -> None:
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


async def test_leases_reaped_inside_acquire_still_reach_the_reaper(state: LiveState, replica_b: LiveState) -> None:
    t = tenant()
    assert (await replica_b.acquire_session(t, "b0", 1, TTL, T0)).granted
    # B dies; A's acquire after the ttl reaps B's lease on the spot...
    assert (await state.acquire_session(t, "a0", 1, TTL, T0 + TTL + 1)).granted
    # ...and the periodic reaper (on any replica) still reports it, so its row gets ended
    assert await replica_b.reap_expired(T0 + TTL + 2) == [(t, "b0")]


async def test_reaper_covers_every_tenant(state: LiveState) -> None:
    tenants = [tenant() for _ in range(3)]
    for t in tenants:
        await state.acquire_session(t, "dead", None, TTL, T0)
        await state.acquire_session(t, "alive", None, TTL, T0)
    await state.heartbeat([(t, "alive") for t in tenants], TTL, T0 + 25)
    reaped = await state.reap_expired(T0 + TTL + 1)
    assert sorted(reaped) == sorted((t, "dead") for t in tenants)


async def test_heartbeat_never_resurrects_a_released_lease(state: LiveState) -> None:
    t1, t2 = tenant(), tenant()
    await state.acquire_session(t1, "s1", None, TTL, T0)
    await state.acquire_session(t2, "s2", None, TTL, T0)
    await state.release_session(t2, "s2")
    lost = await state.heartbeat([(t1, "s1"), (t2, "s2")], TTL, T0 + 10)
    assert lost == [(t2, "s2")]
    assert await state.active_sessions(t2, T0 + 10) == 0
    assert await state.active_sessions(t1, T0 + TTL + 5) == 1  # renewed until T0 + 40


async def test_release_is_idempotent(state: LiveState) -> None:
    t = tenant()
    await state.acquire_session(t, "s1", 2, TTL, T0)
    assert await state.release_session(t, "s1") is True
    assert await state.release_session(t, "s1") is False
    assert await state.release_session(t, "never-held") is False
    assert await state.active_sessions(t, T0) == 0
    assert await state.reap_expired(T0 + 2 * TTL) == []


async def test_idle_tenants_leave_the_reaper_index(state: LiveState, redis_client: aioredis.Redis) -> None:
    t = tenant()
    await state.acquire_session(t, "s1", None, TTL, T0)
    await state.release_session(t, "s1")
    await state.reap_expired(T0 + 60)
    assert await redis_client.zscore(state.keys.tenant_index, t) is not None  # recently active: kept
    await state.reap_expired(T0 + 7200)
    assert await redis_client.zscore(state.keys.tenant_index, t) is None


async def test_tenant_ids_with_braces_are_refused(state: LiveState) -> None:
    with pytest.raises(ValueError, match="invalid tenant id"):
        await state.acquire_session("a{b}", "s", 1, TTL, T0)


# -- session start rate ---------------------------------------------------------------------


async def test_start_rate_is_exact_per_sliding_minute(state: LiveState) -> None:
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


async def test_start_rate_is_shared_by_replicas_under_concurrency(state: LiveState, replica_b: LiveState) -> None:
    t = tenant()
    results = await asyncio.gather(
        *(state.take_start(t, 10, T0) for _ in range(25)), *(replica_b.take_start(t, 10, T0) for _ in range(25))
    )
    assert sum(r.allowed for r in results) == 10
    assert all(r.retry_after_s == pytest.approx(60.0) for r in results if not r.allowed)


# -- budgets --------------------------------------------------------------------------------


async def known_tenant(state: LiveState, now: float) -> str:
    """A tenant whose counters are complete from `now` on (first touch at the month's start)."""
    t = tenant()
    w = BudgetWindows.at(now)
    assert (await state.spend(t, w.month_start)).known
    return t


async def test_reserve_never_grants_beyond_the_limit_under_50_concurrent(
    state: LiveState, replica_b: LiveState
) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "earlier", 100_000, T0)
    amounts = [10_000 + 1_000 * (i % 7) for i in range(50)]
    results = await asyncio.gather(*(
        (state if i % 2 else replica_b).reserve(t, f"r{i}", a, 400_000, None, T0 + 1, 60) for i, a in enumerate(amounts)
    ))  # fmt: skip
    granted = sum(a for a, r in zip(amounts, results, strict=True) if r.granted)
    assert 0 < granted <= 300_000
    assert 300_000 - granted < max(amounts)  # refused only when the next one truly did not fit
    st = await state.spend(t, T0 + 1)
    assert st.reserved_day == st.reserved_month == granted
    assert all(r.refused_by == "day" for r in results if not r.granted)


async def test_monthly_limit_also_binds(state: LiveState) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "x", 900, T0)
    r = await state.reserve(t, "r1", 200, 10_000, 1_000, T0, 60)
    assert not r.granted and r.refused_by == "month"
    assert (await state.reserve(t, "r2", 100, 10_000, 1_000, T0, 60)).granted


async def test_exhausted_budget_refuses_even_zero(state: LiveState) -> None:
    t = await known_tenant(state, T0)
    await state.settle(t, "x", 1_000, T0)
    assert not (await state.reserve(t, "r", 0, 999, None, T0, 60)).granted


async def test_a_forced_reservation_is_held_even_when_it_does_not_fit(state: LiveState) -> None:
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


async def test_settle_is_idempotent_and_releases_the_hold(state: LiveState) -> None:
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


async def test_amounts_stay_exact_at_large_values(state: LiveState) -> None:
    t = await known_tenant(state, T0)
    big = 9_000_000_000_000_123  # 9 billion USD and change
    assert (await state.reserve(t, "r", big, None, None, T0, 60)).state.reserved_day == big
    st = await state.settle(t, "r", big, T0)
    assert (st.spent_month, st.reserved_month) == (big, 0)


async def test_reservations_of_a_dead_holder_expire(state: LiveState, replica_b: LiveState) -> None:
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


async def test_day_and_month_rollover_use_new_counters(state: LiveState) -> None:
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


# -- rebuild from the Postgres ledger -------------------------------------------------------


async def ledger_tenant(pool: asyncpg.Pool) -> tuple[str, str]:
    t = await TenantDirectory(pool).create_tenant(f"livestate-{secrets.token_hex(4)}")
    session_id = f"vgs_{secrets.token_hex(6)}"
    await pool.execute(
        "INSERT INTO realtime_sessions (id, tenant_id, transport, started_at) VALUES ($1, $2, 'websocket', $3)",
        session_id, t.id, datetime.fromtimestamp(T0 - 86400 * 40, UTC),
    )  # fmt: skip
    return t.id, session_id


async def add_response(pool: asyncpg.Pool, tenant_id: str, session_id: str, when: float, cost: int) -> None:
    await pool.execute(
        """INSERT INTO usage_ledger (response_id, session_id, tenant_id, model, status, occurred_at, input_tokens,
               output_tokens, total_tokens, input_text_tokens, input_audio_tokens, input_image_tokens,
               cached_text_tokens, cached_audio_tokens, cached_image_tokens, output_text_tokens,
               output_audio_tokens, cost_micro_usd, price_version)
           VALUES ($1, $2, $3, 'gpt-realtime', 'completed', $4, 1, 1, 2, 1, 0, 0, 0, 0, 0, 1, 0, $5, 'test')""",
        f"resp_{secrets.token_hex(6)}", session_id, tenant_id, datetime.fromtimestamp(when, UTC), cost,
    )  # fmt: skip


async def add_transcription(pool: asyncpg.Pool, tenant_id: str, session_id: str, when: float, cost: int) -> None:
    await pool.execute(
        """INSERT INTO transcription_usage (session_id, item_id, tenant_id, model, occurred_at, usage_type,
               cost_micro_usd, price_version)
           VALUES ($1, $2, $3, 'gpt-4o-transcribe', $4, 'tokens', $5, 'test')""",
        session_id, f"item_{secrets.token_hex(6)}", tenant_id, datetime.fromtimestamp(when, UTC), cost,
    )  # fmt: skip


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


async def test_forget_spend_recovers_a_settle_that_never_reached_redis(state: LiveState, pg_pool: asyncpg.Pool) -> None:
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


async def test_windows_starting_after_since_are_known_without_a_rebuild(state: LiveState) -> None:
    t = tenant()
    await state.spend(t, at("2026-03-14T09:00:00"))  # since = 09:00, after the day began: unknown
    assert not (await state.spend(t, at("2026-03-14T23:00:00"))).known
    st = await state.spend(t, at("2026-03-15T00:00:01"))  # the day is complete in Redis...
    assert not st.known  # ...but the month still lacks its first 13 days
    st = await state.spend(t, at("2026-04-01T00:00:01"))
    assert st.known


# -- broadcasts -----------------------------------------------------------------------------


async def test_publish_reaches_other_replicas_with_the_origin(state: LiveState, replica_b: LiveState) -> None:
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


async def test_subscribe_is_cancellable_and_resubscribes_after_a_lost_connection(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    name = f"livestate-test-{secrets.token_hex(4)}"
    client = aioredis.from_url(REDIS_URL, client_name=name)
    sub = LiveState(client, prefix=prefix, instance_id="pod-c")
    pub = LiveState(redis_client, prefix=prefix, instance_id="pod-a")
    ready = asyncio.Event()
    received: list[Broadcast] = []

    async def listen() -> None:
        async for event in sub.subscribe(ready):
            received.append(event)

    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
            ready.clear()
            for c in await redis_client.client_list():  # drop only this subscriber's connection
                if c.get("name") == name:
                    await redis_client.client_kill_filter(_id=c["id"])
            while not any(e.kind == RESYNC for e in received):
                await pub.publish("probe", "ten_z")
                await asyncio.sleep(0.05)
            await ready.wait()
            await pub.publish("budget_exhausted", "ten_z")
            while not any(e.kind == "budget_exhausted" for e in received):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.aclose()


# -- upstream headroom ----------------------------------------------------------------------


async def test_headroom_is_the_latest_snapshot_until_it_goes_stale(state: LiveState, replica_b: LiveState) -> None:
    assert await state.headroom(T0) is None
    await replica_b.record_headroom(40_000, 1_200, 12.5, T0)
    h = await state.headroom(T0 + 5)
    assert h is not None
    assert (h.tokens_limit, h.tokens_remaining, h.reset_seconds, h.observed_at) == (40_000, 1_200, 12.5, T0)
    assert h.retry_after_s(T0 + 5) == pytest.approx(7.5)
    await state.record_headroom(40_000, 30_000, 1.0, T0 - 1)  # an older snapshot arriving late: ignored
    assert (await state.headroom(T0 + 5)).tokens_remaining == 1_200  # type: ignore[union-attr]
    assert await state.headroom(T0 + 12.5) is None  # older than its reset time


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
