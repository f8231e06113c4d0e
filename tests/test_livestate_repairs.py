"""Leases and counters after a race or an outage: nothing taken back for a session that is gone,
nothing failed left unrepaired (docs/live-state.md, "Leases and reaping", "When Redis is unreachable").

The lease tests hold a real Redis call in flight (a heartbeat or an acquire waiting, as it does for a
pooled connection during a burst) while a session ends, so the interleaving that leaked leases in
the 321-session burst happens every time instead of once in ten runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.livestate import LeaseResult, LiveState, MemoryLiveState
from gateway.livestate.repair import RETRY_INTERVAL_S, LiveStateRepairs
from gateway.session.enforcement import Enforcement
from gateway.settings import EnforcementSettings
from tests.conftest import REDIS_URL
from tests.support.clock import FakeClock

TTL = 30.0


class HeldCalls(LiveState):
    """Redis live state whose heartbeat or acquire can be held before it is sent (`hold`)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        super().__init__(redis, prefix, "pod-a")
        self.hold: str | None = None  # "heartbeat" or "acquire_session"
        self.waiting = asyncio.Event()  # the held call has been made and waits
        self.go = asyncio.Event()

    async def _held(self, name: str) -> None:
        if self.hold == name:
            self.hold = None
            self.waiting.set()
            await self.go.wait()

    async def heartbeat(self, sessions: Iterable[tuple[str, str]], ttl_s: float, now: float) -> list[tuple[str, str]]:
        sessions = list(sessions)
        await self._held("heartbeat")
        return await super().heartbeat(sessions, ttl_s, time.time())

    async def acquire_session(
        self,
        tenant_id: str,
        session_id: str,
        limit: int | None,
        ttl_s: float,
        now: float,
        model: str | None = None,
        model_limit: int | None = None,
    ) -> LeaseResult:
        await self._held("acquire_session")
        return await super().acquire_session(tenant_id, session_id, limit, ttl_s, time.time(), model, model_limit)


@dataclass
class Started:
    tenant_id: str


@dataclass
class Live:
    """What Enforcement reads of a running session (gateway.session.live.LiveSession)."""

    started: Started
    session_id: str
    leased: bool = True


@dataclass
class Carried:
    live: Live


@dataclass
class Replica:
    state: HeldCalls
    enforcement: Enforcement
    sessions: list[Carried] = field(default_factory=list)

    async def end(self, session: Carried) -> None:
        """As a session's `aclose()` does: give the lease back, then stop counting as leased."""
        await self.enforcement.release(session.live.started.tenant_id, session.live.session_id)
        session.live.leased = False
        self.sessions.remove(session)


@pytest.fixture
async def replica(redis_prefix: str, redis_client: aioredis.Redis) -> AsyncIterator[Replica]:
    """(`redis_client` is there so the session's keys are deleted at the end.)"""
    client = aioredis.from_url(REDIS_URL)
    state = HeldCalls(client, f"{redis_prefix}{secrets.token_hex(3)}:")
    await state.load_scripts()
    sessions: list[Carried] = []
    # Admission and rebuilds are not exercised here: no policies, pool, ledger or prices.
    enforcement = Enforcement(
        state,
        None,
        None,
        None,
        None,
        lambda: sessions,  # type: ignore[arg-type]
        EnforcementSettings(lease_ttl_seconds=TTL),
    )
    yield Replica(state, enforcement, sessions)
    await client.aclose()


async def admitted(replica: Replica, tenant_id: str) -> Carried:
    session = Carried(Live(Started(tenant_id), f"vgs_{secrets.token_hex(4)}"))
    assert (await replica.state.acquire_session(tenant_id, session.live.session_id, 10, TTL, time.time())).granted
    replica.sessions.append(session)
    return session


async def test_a_lease_released_while_a_heartbeat_is_in_flight_is_not_taken_back(replica: Replica) -> None:
    tenant = f"ten_{secrets.token_hex(3)}"
    ending, staying = await admitted(replica, tenant), await admitted(replica, tenant)
    replica.state.hold = "heartbeat"
    beat = asyncio.create_task(replica.enforcement._beat())
    await replica.state.waiting.wait()  # the heartbeat has its list of leases: both sessions
    await replica.end(ending)  # released in Redis before the heartbeat reaches it
    replica.state.go.set()
    await beat  # the heartbeat reports `ending` lost: it must not re-acquire it
    assert await replica.state.active_sessions(tenant, time.time()) == 1
    await replica.end(staying)
    assert await replica.state.active_sessions(tenant, time.time()) == 0


async def test_a_lease_released_while_it_is_being_taken_back_is_given_back_again(replica: Replica) -> None:
    tenant = f"ten_{secrets.token_hex(3)}"
    session = await admitted(replica, tenant)
    other = LiveState(replica.state.redis, replica.state.keys.prefix, "observer")
    await other.release_session(tenant, session.live.session_id)  # its lease lapsed (e.g. Redis flushed)
    replica.state.hold = "acquire_session"
    beat = asyncio.create_task(replica.enforcement._beat())
    await replica.state.waiting.wait()  # the heartbeat found it lost; the re-acquire waits to be sent
    await replica.end(session)  # the session ends meanwhile (its release finds nothing to release)
    replica.state.go.set()
    await beat
    assert await replica.state.active_sessions(tenant, time.time()) == 0


async def test_the_reaper_reports_no_replica_lost_for_a_session_that_ended_here(replica: Replica) -> None:
    tenant = f"ten_{secrets.token_hex(3)}"
    session = await admitted(replica, tenant)
    await replica.end(session)
    assert await replica.state.active_sessions(tenant, time.time()) == 0
    # Its lease is reaped anyway by the next reap (as when the release raced an expiry): nothing to end.
    assert (await replica.state.acquire_session(tenant, session.live.session_id, None, 0.01, time.time())).granted
    await asyncio.sleep(0.02)
    submitted: list[object] = []
    replica.enforcement.ledger = type("Ledger", (), {"submit": staticmethod(submitted.append)})()  # type: ignore[assignment]
    await replica.enforcement._reap_once()
    assert submitted == []


# -- the repair queue ----------------------------------------------------------------------


async def test_a_settle_failing_while_its_tenant_is_rebuilt_makes_it_rebuild_again() -> None:
    state = MemoryLiveState()
    calls: list[tuple[str, bool]] = []

    async def recount(tenant: str, forget: bool) -> bool:
        calls.append((tenant, forget))
        if len(calls) == 1:  # a settle of the same tenant fails while the first rebuild reads the ledger
            repairs.settle_failed(tenant, None)
        return True

    repairs = LiveStateRepairs(state, recount, lambda: ())
    repairs.settle_failed("ten_a", "r1")
    assert await repairs.apply() is False  # the second failure is still pending
    assert await repairs.apply() is True
    assert calls == [("ten_a", True), ("ten_a", True)]
    assert repairs.pending == 0


async def test_a_rebuild_that_may_have_missed_rows_is_done_again() -> None:
    state = MemoryLiveState()
    answers = [False, False, True]  # the ledger writer still held rows twice, then had committed them

    async def recount(tenant: str, forget: bool) -> bool:
        return answers.pop(0)

    repairs = LiveStateRepairs(state, recount, lambda: ())
    repairs.settle_failed("ten_a", None)
    assert [await repairs.apply() for _ in range(3)] == [False, False, True]
    assert answers == [] and repairs.stats.counters_rebuilt == 3


async def test_a_failed_release_is_applied_even_after_the_lease_ttl() -> None:
    state = MemoryLiveState()
    clock = FakeClock()

    async def recount(tenant: str, forget: bool) -> bool:
        return True

    repairs = LiveStateRepairs(state, recount, lambda: (), clock)
    assert (await state.acquire_session("ten_a", "s1", None, TTL, clock.time())).granted
    repairs.release_failed("ten_a", "s1")
    await clock.advance(2 * TTL)  # Redis came back late; a heartbeat in flight at the failure may have renewed it
    assert (await state.heartbeat([("ten_a", "s1")], TTL, clock.time())) == []
    assert await repairs.apply() is True
    assert await state.active_sessions("ten_a", clock.time()) == 0
    assert (repairs.stats.releases_retried, repairs.stats.releases_left_to_ttl) == (1, 0)


class Unreachable(MemoryLiveState):
    """A store that refuses every ping while `down` (Redis unreachable), and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")


async def asleep_on(clock: FakeClock, sleepers: int = 1) -> None:
    """Wait (real time, bounded) until `sleepers` tasks wait on `clock`."""
    async with asyncio.timeout(5):
        while clock.sleepers < sleepers:
            await asyncio.sleep(0)


async def test_the_repair_loop_retries_every_interval_of_its_clock_until_the_store_answers() -> None:
    state, clock, settled = Unreachable(), FakeClock(), []

    async def recount(tenant: str, forget: bool) -> bool:
        settled.append(tenant)
        return True

    repairs = LiveStateRepairs(state, recount, lambda: (), clock)
    loop = asyncio.create_task(repairs.run(lambda: False))
    try:
        repairs.release_failed("ten_a", "s1")
        repairs.settle_failed("ten_b", "res_1")
        await asleep_on(clock)  # tried once at the failure, then waits an interval
        assert state.pings == 1
        await clock.advance(RETRY_INTERVAL_S / 2)
        assert state.pings == 1  # not before the interval has passed
        await clock.advance(RETRY_INTERVAL_S / 2)
        await asleep_on(clock)
        assert (state.pings, repairs.pending) == (2, 4)  # two queued repairs, one tenant, the outage
        state.down = False
        await clock.advance(RETRY_INTERVAL_S)
        assert (state.pings, repairs.pending, settled) == (3, 0, ["ten_b"])
        assert (repairs.stats.releases_retried, repairs.stats.outages) == (1, 1)
        assert clock.sleepers == 0  # nothing pending: it waits for the next failure, not on the clock
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


class SlowSettles(MemoryLiveState):
    """A store whose settles take `delay` seconds (Redis slow under load)."""

    delay = 5.0

    async def settle(self, tenant_id: str, reservation_id: str, actual: int, now: float):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay)
        return await super().settle(tenant_id, reservation_id, actual, now)


async def test_a_settle_cut_off_when_the_session_stops_goes_to_the_repair_queue() -> None:
    # SessionEffects.stop() waits a bounded time, then cancels: the settle running at that moment
    # and the ones queued behind it are all handed to the repair queue (docs/budgets.md: a settle
    # that fails is never dropped), so the holds are released and the counters rebuilt.
    from gateway.session.effects import SessionEffects
    from policies.actions import SettleBudget
    from policies.policy import TenantPolicy

    state = SlowSettles()
    enforcement = Enforcement(
        state,
        None,
        None,
        None,
        None,
        lambda: (),  # type: ignore[arg-type]
        EnforcementSettings(lease_ttl_seconds=TTL),
    )
    effects = SessionEffects(enforcement, "ten_a", "vgs_a", TenantPolicy())

    class Owner:
        async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
            pass

    effects.start(Owner())
    effects.submit(SettleBudget("res_1", 100, 100))
    effects.submit(SettleBudget("res_2", 100, 100))
    await asyncio.sleep(0.05)  # res_1 is being settled; res_2 waits behind it
    await effects.stop(timeout=0.2)
    assert set(enforcement.repairs._settles) == {("ten_a", "res_1"), ("ten_a", "res_2")}
    assert enforcement.repairs.stats.settles_failed == 2
