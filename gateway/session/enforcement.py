"""Policy enforcement across replicas: the I/O side of `policies.admission` and the governor.

`Enforcement` (one per process) admits sessions against the tenant's policy and the
shared live state in Redis, keeps this replica's concurrency leases alive, reaps the
leases of replicas that died, and relays broadcasts (budget exhausted, policy changed)
to the live sessions they concern. `SessionEffects` (one per session) executes, in
order, the governor's actions that need shared state: budget reservations and
settlements, alerts and exhaustion broadcasts, and upstream headroom.

When Redis is unreachable: new sessions are refused (503 `live_state_unavailable`) or
admitted without shared checks, per the tenant policy's `redis_unavailable`
(`fail_closed` by default); live sessions keep being metered into the Postgres ledger
either way, and their budget checks fall back to granting (logged). Nothing that failed is
dropped: releases are retried and failed settles make the tenant's counters be rebuilt from
the ledger once Redis answers (`gateway.livestate.repair`); a replica never reaps its own
sessions, and after an outage it renews its own leases before reaping anyone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
from redis.exceptions import RedisError

from gateway.background import stop_tasks
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.writer import LedgerWriter, SessionEnded
from gateway.livestate import LiveStateBackend, ReserveResult, SpendState
from gateway.livestate.repair import LiveStateRepairs
from gateway.settings import EnforcementSettings
from policies.actions import AuditEvent, RateLimit, RateLimitsRecord, ReserveBudget, SettleBudget
from policies.admission import AdmissionSnapshot, Refuse, decide_admission
from policies.budget import BudgetLimits, BudgetState, crossed_alerts, is_exhausted
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.pricing import PriceTable

if TYPE_CHECKING:
    from gateway.session.live import LiveSession
    from gateway.storage.policy_store import PolicyStore

log = logging.getLogger("voxgate.enforcement")

RESERVATION_TTL_S = 600.0
# Before rebuilding counters from the ledger, wait this long at most for this replica's ledger
# writer to commit what it holds, so the rebuild does not miss those rows (docs/live-state.md).
REBUILD_LEDGER_WAIT_S = 2.0
MAX_RELEASED = 100_000  # released leases remembered (for one lease TTL) against a late heartbeat


class EnforcedSession(Protocol):
    """What the enforcement loops need from a live session's transport."""

    live: LiveSession


@dataclass(frozen=True, slots=True)
class Admission:
    policy: TenantPolicy
    policy_version: int | None
    leased: bool


def _budget_state(spend: SpendState) -> BudgetState:
    return BudgetState(spend.spent_day, spend.spent_month, spend.reserved_day, spend.reserved_month)


def _refusal(refuse: Refuse) -> GatewayError:
    return GatewayError(
        refuse.status,
        refuse.message,
        code=refuse.code,
        param=refuse.param,
        type=refuse.type,
        retry_after=refuse.retry_after,
    )


class Enforcement:
    """Admission, leases, reaping and broadcasts for one gateway process."""

    def __init__(
        self,
        live_state: LiveStateBackend,
        policies: PolicyStore | None,
        pool: asyncpg.Pool,
        ledger: LedgerWriter,
        prices: PriceTable,
        sessions: Callable[[], Iterable[EnforcedSession]],
        settings: EnforcementSettings | None = None,
    ) -> None:
        settings = settings or EnforcementSettings()
        self.lease_ttl = settings.lease_ttl_seconds
        self.beat_every = settings.lease_ttl_seconds / 3
        self.reap_every = settings.reap_interval_seconds
        self.state = live_state
        self.policies = policies
        self.pool = pool
        self.ledger = ledger
        self.prices = prices
        self._sessions = sessions
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.repairs = LiveStateRepairs(
            live_state, self._recount, lambda: {s.live.started.tenant_id for s in self._sessions()}
        )
        self._outage = False  # a live-state call failed since the reaper last ran
        self._reap_after = 0.0  # after an outage, other replicas get one heartbeat to renew first
        self._rebuilds: dict[str, asyncio.Future[SpendState]] = {}
        # Leases given back recently -> when: a heartbeat or reap that was in flight meanwhile must
        # not take them back. Kept one lease TTL (no call outlives that), at most MAX_RELEASED.
        self._released: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._headroom: RateLimitsRecord | None = None  # newest snapshot not yet written
        self._headroom_task: asyncio.Task[None] | None = None

    def store_failed(self) -> None:
        """A live-state call failed: repairs will check what the outage lost once it answers again."""
        self._outage = True
        self.repairs.store_failed()

    async def rebuild_spend(self, tenant_id: str, now: float) -> SpendState:
        """Counters from the ledger, after this replica's queued ledger rows are committed (bounded wait).

        Concurrent callers for one tenant (a burst after Redis restarted) share one rebuild."""
        running = self._rebuilds.get(tenant_id)
        if running is None:
            running = self._rebuilds[tenant_id] = asyncio.ensure_future(self._rebuild(tenant_id, now))
            running.add_done_callback(lambda _: self._rebuilds.pop(tenant_id, None))
        return await asyncio.shield(running)

    async def _recount(self, tenant_id: str, forget: bool) -> bool:
        """After an outage: the tenant's counters become the ledger's sums (`forget` first drops what
        Redis holds). True if exact: this replica's ledger rows were all committed before the ledger
        was read, and the counters came back known; otherwise the caller tries again later.
        Rebuilt counters may show the budget spent: this replica's sessions of the tenant are cut then."""
        drained = await self.ledger.drain(REBUILD_LEDGER_WAIT_S)
        now = time.time()
        if forget:
            await self.state.forget_spend(tenant_id, now)
        # Not the shared `rebuild_spend`: one started before the forget may finish before it.
        spend = await self.state.rebuild_spend(self.pool, tenant_id, now)
        if any(s.live.started.tenant_id == tenant_id for s in self._sessions()):
            await self._recheck_budget(tenant_id, time.time())
        if not drained:
            log.warning("rebuilt %s's budget while the ledger writer still held rows; rebuilding again", tenant_id)
        return drained and spend.known

    async def _rebuild(self, tenant_id: str, now: float) -> SpendState:
        if not await self.ledger.drain(REBUILD_LEDGER_WAIT_S):
            log.warning("rebuilding %s's budget while the ledger writer still holds rows", tenant_id)
        return await self.state.rebuild_spend(self.pool, tenant_id, now)

    # -- admission ------------------------------------------------------------------------

    async def policy_for(self, tenant_id: str) -> tuple[TenantPolicy, int | None]:
        if self.policies is None:
            return UNRESTRICTED, None
        effective = await self.policies.effective(tenant_id)
        return effective.policy, effective.version

    async def admit(self, tenant_id: str, session_id: str, model: str | None, now: float) -> Admission:
        """Admit a new session or raise an OpenAI-shaped GatewayError (before the upgrade).

        `model` is None for transcription sessions: no realtime model is used, so the
        allowlist does not apply and budgets are checked against the policy's first model.
        """
        policy, version = await self.policy_for(tenant_id)
        if model is None:
            model = min(policy.models) if policy.models else "gpt-realtime"
        if not policy.allows_model(model):
            refused = decide_admission(policy, model, AdmissionSnapshot(), now)
            assert isinstance(refused, Refuse)
            raise _refusal(refused)
        try:
            return await self._admit_shared(policy, version, tenant_id, session_id, model, now)
        except RedisError as exc:
            if policy.redis_unavailable == "fail_open":
                log.warning("live state unreachable (%s); admitting %s without shared checks", exc, session_id)
                return Admission(policy, version, leased=False)
            raise GatewayError(
                503,
                "Shared session state is unavailable; retry shortly.",
                code="live_state_unavailable",
                retry_after=1.0,
            ) from None

    async def _admit_shared(
        self, policy: TenantPolicy, version: int | None, tenant_id: str, session_id: str, model: str, now: float
    ) -> Admission:
        view = await self.state.tenant_view(tenant_id, now)  # one round trip: each needs a pooled connection
        spend, headroom = view.spend, view.headroom
        if not spend.known:
            spend = await self.rebuild_spend(tenant_id, now)
        upstream = None
        if headroom is not None:
            limit = RateLimit("tokens", headroom.tokens_limit, headroom.tokens_remaining, headroom.reset_seconds)
            upstream = RateLimitsRecord("", "", headroom.observed_at, (limit,))
        snapshot = AdmissionSnapshot(
            active_sessions=view.active_sessions, budget=_budget_state(spend), upstream=upstream
        )
        decision = decide_admission(policy, model, snapshot, now, self.prices)
        if isinstance(decision, Refuse):
            raise _refusal(decision)
        # The atomic steps decide races between replicas: start rate, then the lease.
        if policy.session_starts_per_minute is not None:
            start = await self.state.take_start(tenant_id, policy.session_starts_per_minute, now)
            if not start.allowed:
                raise GatewayError(
                    429,
                    f"Too many new sessions: the limit is {policy.session_starts_per_minute} per minute.",
                    code="session_rate_limit_exceeded",
                    type="rate_limit_error",
                    retry_after=start.retry_after_s,
                )
        try:
            lease = await self.state.acquire_session(
                tenant_id, session_id, policy.max_concurrent_sessions, self.lease_ttl, now
            )
        except RedisError:  # the lease may have been taken before the reply was lost: give it back later
            self.repairs.release_failed(tenant_id, session_id)
            raise
        if not lease.granted:
            raise GatewayError(
                429,
                f"This tenant already has {lease.active} active sessions (limit {policy.max_concurrent_sessions}).",
                code="concurrency_limit_exceeded",
                type="rate_limit_error",
                retry_after=1.0,
            )
        return Admission(policy, version, leased=True)

    async def release(self, tenant_id: str, session_id: str) -> None:
        """Give the lease back; if Redis does not answer, the release is queued and retried.

        From this call on, no heartbeat or reap of this replica takes the lease back."""
        self._remember_released((tenant_id, session_id))
        try:
            await self.state.release_session(tenant_id, session_id)
        except RedisError as exc:
            log.warning("releasing the lease of %s failed (%s); retrying in the background", session_id, exc)
            self.repairs.release_failed(tenant_id, session_id)
            self._outage = True

    # -- upstream headroom ----------------------------------------------------------------

    def note_headroom(self, record: RateLimitsRecord) -> None:
        """Store the org's token headroom from a session's `rate_limits.updated`. Only the newest
        snapshot matters (`record_headroom` keeps the newest), so this process writes the latest one
        it has, one write at a time, instead of one round trip per response."""
        if self._headroom is None or record.observed_at >= self._headroom.observed_at:
            self._headroom = record
        if self._headroom_task is None or self._headroom_task.done():
            self._headroom_task = asyncio.create_task(self._write_headroom(), name="voxgate-headroom")

    async def _write_headroom(self) -> None:
        while self._headroom is not None:
            record, self._headroom = self._headroom, None
            try:
                for lim in record.limits:
                    if lim.name == "tokens":
                        await self.state.record_headroom(
                            lim.limit, lim.remaining, lim.reset_seconds, record.observed_at
                        )
            except RedisError as exc:  # not money: the next `rate_limits.updated` brings a newer one
                log.warning("recording upstream headroom failed: %s", exc)
                self.store_failed()

    # -- background loops -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="voxgate-lease-heartbeat"),
            asyncio.create_task(self._reaper(), name="voxgate-lease-reaper"),
            asyncio.create_task(self._broadcasts(), name="voxgate-broadcasts"),
            asyncio.create_task(self.repairs.run(lambda: self._stopping), name="voxgate-live-state-repair"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks(self._tasks + ([self._headroom_task] if self._headroom_task is not None else []))
        self._tasks, self._headroom_task = [], None

    def _remember_released(self, key: tuple[str, str]) -> None:
        now = time.time()
        self._released[key] = now
        self._released.move_to_end(key)
        while self._released and (
            len(self._released) > MAX_RELEASED or next(iter(self._released.values())) < now - self.lease_ttl
        ):
            self._released.popitem(last=False)

    def _own_leases(self) -> set[tuple[str, str]]:
        """Sessions running here that hold a lease and have not begun giving it back."""
        held = {(s.live.started.tenant_id, s.live.session_id) for s in self._sessions() if s.live.leased}
        return held - self._released.keys()

    async def _take_back(self, lost: Iterable[tuple[str, str]]) -> None:
        """Re-acquire, uncapped, the lapsed leases of sessions that still run here and still hold one
        now (a lease reported lost may have been released while the report was in flight)."""
        own = self._own_leases()
        todo = [key for key in lost if key in own]
        if not todo:
            return
        log.warning("leases of %d own live sessions had lapsed; re-acquired them", len(todo))
        await asyncio.gather(
            *(
                self.state.acquire_session(tenant_id, session_id, None, self.lease_ttl, time.time())
                for tenant_id, session_id in todo
            )
        )
        still = self._own_leases()  # released while the acquire was in flight: give it back again
        await asyncio.gather(*(self.release(*key) for key in todo if key not in still))

    async def _beat(self) -> None:
        """Renew this replica's leases; one that is gone (reaped, Redis flushed) is taken back, uncapped:
        the session is running here, so it holds a slot whatever Redis says."""
        held = self._own_leases()
        if not held:
            return
        await self._take_back(await self.state.heartbeat(held, self.lease_ttl, time.time()))

    async def _heartbeats(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.beat_every)
            try:
                await self._beat()
            except RedisError as exc:
                log.warning("lease heartbeat failed: %s", exc)
                self.store_failed()

    async def _reaper(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.reap_every)
            try:
                await self._reap_once()
            except RedisError as exc:
                log.warning("lease reaper failed: %s", exc)
                self.store_failed()

    async def _reap_once(self) -> None:
        """End the sessions of replicas whose heartbeat stopped; never one this process carries."""
        if self._outage:  # our own leases may have lapsed meanwhile: renew them before reaping anyone's,
            await self._beat()
            self._outage = False  # ...and let every other replica renew theirs (one heartbeat) first
            self._reap_after = time.time() + self.beat_every + self.reap_every
        if time.time() < self._reap_after:
            return
        reaped = await self.state.reap_expired(time.time())
        if not reaped:
            return
        ours = {(s.live.started.tenant_id, s.live.session_id) for s in self._sessions()}
        await self._take_back(key for key in reaped if key in ours)  # alive here: a slow loop, an outage
        for tenant_id, session_id in reaped:
            if (tenant_id, session_id) in ours or (tenant_id, session_id) in self._released:
                continue  # running here, or ended here normally while its lease was being reaped
            log.info("reaped session %s of tenant %s (its replica stopped heartbeating)", session_id, tenant_id)
            self.ledger.submit(SessionEnded(session_id, time.time(), "replica_lost", "lease expired"))

    async def _broadcasts(self) -> None:
        async for event in self.state.subscribe():
            try:
                await self._on_broadcast(event.kind, event.tenant_id)
            except Exception:
                log.exception("handling broadcast %s for %s failed", event.kind, event.tenant_id)

    async def _on_broadcast(self, kind: str, tenant_id: str) -> None:
        now = time.time()
        if kind == "budget_exhausted":
            for session in self._sessions():
                if session.live.started.tenant_id == tenant_id:
                    await session.live.budget_exhausted(now)
        elif kind == "policy_changed":
            mine = [s for s in self._sessions() if s.live.started.tenant_id == tenant_id]
            if mine:
                policy, _ = await self.policy_for(tenant_id)
                for session in mine:
                    await session.live.policy_changed(policy, now)
        elif kind == "resync":
            for tenant in {s.live.started.tenant_id for s in self._sessions()}:
                await self._recheck_budget(tenant, now)

    async def _recheck_budget(self, tenant_id: str, now: float) -> None:
        policy, _ = await self.policy_for(tenant_id)
        limits = BudgetLimits.from_policy(policy.budget)
        if limits.limited and is_exhausted(_budget_state(await self.state.spend(tenant_id, now)), limits):
            await self._on_broadcast("budget_exhausted", tenant_id)


# Budget actions from the governor, plus ("headroom", RateLimitsRecord) and ("spend", id, micro_usd).
EffectItem = ReserveBudget | SettleBudget | AuditEvent | tuple[Any, ...]


class ReservationOwner(Protocol):
    """Who hears back about a reservation: the session's `LiveSession`."""

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None: ...


class SessionEffects:
    """Executes one session's shared-state actions in order, off the relay's hot path."""

    def __init__(self, enforcement: Enforcement, tenant_id: str, session_id: str, policy: TenantPolicy) -> None:
        self.enforcement = enforcement
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.policy = policy
        self._queue: asyncio.Queue[EffectItem] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._owner: ReservationOwner | None = None
        self._current: EffectItem | None = None

    def start(self, owner: ReservationOwner) -> None:
        self._owner = owner
        self._task = asyncio.create_task(self._run(), name=f"voxgate-effects-{self.session_id}")

    def submit(self, action: EffectItem) -> None:
        self._queue.put_nowait(action)

    async def stop(self, timeout: float = 2.0) -> None:
        """Finish the queued effects within `timeout`; settles still pending then are handed to the
        repair queue (their tenant's counters get rebuilt from the ledger), never dropped."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        left = [] if self._current is None else [self._current]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for item in left:
            self._settle_failed(item)

    def _settle_failed(self, item: EffectItem) -> None:
        if isinstance(item, SettleBudget):
            self.enforcement.repairs.settle_failed(self.tenant_id, item.reservation_id)
        elif isinstance(item, tuple) and item[0] == "spend":
            self.enforcement.repairs.settle_failed(self.tenant_id, None)

    async def _run(self) -> None:
        while True:
            item = self._current = await self._queue.get()
            try:
                await self._execute(item)
            except RedisError as exc:
                log.warning("session %s: live state unreachable for %s: %s", self.session_id, type(item).__name__, exc)
                self.enforcement.store_failed()
                await self._failed(item)
            except Exception:
                log.exception("session %s: effect %r failed", self.session_id, item)
                await self._failed(item)
            finally:
                self._queue.task_done()
            # Not in `finally`: an item cut off by `stop()`'s cancel stays `_current`, so `stop()`
            # hands it to the repair queue instead of dropping it.
            self._current = None

    async def _failed(self, item: EffectItem) -> None:
        self._settle_failed(item)
        if isinstance(item, ReserveBudget) and self._owner is not None:
            # Metering continues into the ledger; without shared state we cannot refuse.
            await self._owner.reservation_answered(item.reservation_id, True)

    async def _execute(self, item: EffectItem) -> None:
        now = time.time()
        limits = BudgetLimits.from_policy(self.policy.budget)
        if isinstance(item, ReserveBudget):
            result = await self._reserve(item, limits, now)
            if result.refused_by == "unknown":  # counters lost (Redis restarted, or forgotten): rebuild first
                await self.enforcement.rebuild_spend(self.tenant_id, now)
                result = await self._reserve(item, limits, time.time())
            if result.refused_by == "unknown":  # rebuilt, then lost again: cannot check, cannot refuse
                log.warning("session %s: budget counters unknown after a rebuild; granting", self.session_id)
            if self._owner is not None:
                await self._owner.reservation_answered(
                    item.reservation_id, result.granted or result.refused_by == "unknown"
                )
        elif isinstance(item, SettleBudget):
            await self._settle(item.reservation_id or new_id("stl"), item.actual_micro_usd, now, limits)
        elif isinstance(item, AuditEvent):
            self.enforcement.ledger.submit(item)
        elif item[0] == "headroom":  # ("headroom", RateLimitsRecord)
            self.enforcement.note_headroom(item[1])
        elif item[0] == "spend":  # spend without a reservation (input transcription)
            await self._settle(item[1], item[2], now, limits)

    async def _reserve(self, item: ReserveBudget, limits: BudgetLimits, now: float) -> ReserveResult:
        return await self.enforcement.state.reserve(
            self.tenant_id,
            item.reservation_id,
            item.amount_micro_usd,
            limits.daily_micro_usd,
            limits.monthly_micro_usd,
            now,
            RESERVATION_TTL_S,
            forced=item.forced,
        )

    async def _settle(self, settle_id: str, actual: int, now: float, limits: BudgetLimits) -> None:
        state = self.enforcement.state
        if not limits.limited:  # no alert or exhaustion to detect: one round trip
            await state.settle(self.tenant_id, settle_id, actual, now)
            return
        before = _budget_state(await state.spend(self.tenant_id, now))
        after = _budget_state(await state.settle(self.tenant_id, settle_id, actual, now))
        for alert in crossed_alerts(before, after, limits):
            self.enforcement.ledger.submit(
                AuditEvent("budget.alert", self.session_id, self.tenant_id, now, {"alert": repr(alert)})
            )
        if is_exhausted(after, limits):
            self.enforcement.ledger.submit(
                AuditEvent(
                    "budget.exhausted",
                    self.session_id,
                    self.tenant_id,
                    now,
                    {
                        "spent_day": after.spent_day,
                        "spent_month": after.spent_month,
                        "reserved_day": after.reserved_day,
                        "reserved_month": after.reserved_month,
                    },
                )
            )
            await state.publish("budget_exhausted", self.tenant_id, {"session_id": self.session_id})
