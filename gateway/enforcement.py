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
either way, and their budget checks fall back to granting (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
from redis.exceptions import RedisError

from gateway.background import stop_tasks
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger import LedgerWriter, SessionEnded
from gateway.livestate import LiveState, SpendState
from gateway.settings import EnforcementSettings
from policies.actions import AuditEvent, RateLimit, RateLimitsRecord, ReserveBudget, SettleBudget
from policies.admission import AdmissionSnapshot, Refuse, decide_admission
from policies.budget import BudgetLimits, BudgetState, crossed_alerts, is_exhausted
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.pricing import PriceTable

if TYPE_CHECKING:
    from gateway.live_session import LiveSession
    from gateway.storage.policy_store import PolicyStore

log = logging.getLogger("voxgate.enforcement")

RESERVATION_TTL_S = 600.0


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
    return GatewayError(refuse.status, refuse.message, code=refuse.code, param=refuse.param, type=refuse.type,
                        retry_after=refuse.retry_after)  # fmt: skip


class Enforcement:
    """Admission, leases, reaping and broadcasts for one gateway process."""

    def __init__(
        self,
        live_state: LiveState,
        policies: PolicyStore | None,
        pool: asyncpg.Pool,
        ledger: LedgerWriter,
        prices: PriceTable,
        sessions: Callable[[], Iterable[EnforcedSession]],
        settings: EnforcementSettings | None = None,
    ) -> None:
        settings = settings or EnforcementSettings()
        self.lease_ttl = settings.lease_ttl_seconds
        self.reap_every = settings.reap_interval_seconds
        self.state = live_state
        self.policies = policies
        self.pool = pool
        self.ledger = ledger
        self.prices = prices
        self._sessions = sessions
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

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
            raise GatewayError(503, "Shared session state is unavailable; retry shortly.",
                               code="live_state_unavailable", retry_after=1.0) from None  # fmt: skip

    async def _admit_shared(
        self, policy: TenantPolicy, version: int | None, tenant_id: str, session_id: str, model: str, now: float
    ) -> Admission:
        spend = await self.state.spend(tenant_id, now)
        if not spend.known:
            spend = await self.state.rebuild_spend(self.pool, tenant_id, now)
        headroom = await self.state.headroom(now)
        upstream = None
        if headroom is not None:
            limit = RateLimit("tokens", headroom.tokens_limit, headroom.tokens_remaining, headroom.reset_seconds)
            upstream = RateLimitsRecord("", "", headroom.observed_at, (limit,))
        snapshot = AdmissionSnapshot(
            active_sessions=await self.state.active_sessions(tenant_id, now),
            budget=_budget_state(spend),
            upstream=upstream,
        )
        decision = decide_admission(policy, model, snapshot, now, self.prices)
        if isinstance(decision, Refuse):
            raise _refusal(decision)
        # The atomic steps decide races between replicas: start rate, then the lease.
        if policy.session_starts_per_minute is not None:
            start = await self.state.take_start(tenant_id, policy.session_starts_per_minute, now)
            if not start.allowed:
                raise GatewayError(429, f"Too many new sessions: the limit is {policy.session_starts_per_minute} "
                                   "per minute.", code="session_rate_limit_exceeded", type="rate_limit_error",
                                   retry_after=start.retry_after_s)  # fmt: skip
        lease = await self.state.acquire_session(tenant_id, session_id, policy.max_concurrent_sessions, self.lease_ttl,
                                                 now)  # fmt: skip
        if not lease.granted:
            raise GatewayError(429, f"This tenant already has {lease.active} active sessions (limit "
                               f"{policy.max_concurrent_sessions}).", code="concurrency_limit_exceeded",
                               type="rate_limit_error", retry_after=1.0)  # fmt: skip
        return Admission(policy, version, leased=True)

    async def release(self, tenant_id: str, session_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.state.release_session(tenant_id, session_id)

    # -- background loops -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="voxgate-lease-heartbeat"),
            asyncio.create_task(self._reaper(), name="voxgate-lease-reaper"),
            asyncio.create_task(self._broadcasts(), name="voxgate-broadcasts"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks(self._tasks)
        self._tasks = []

    async def _heartbeats(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_ttl / 3)
            held = [(s.live.started.tenant_id, s.live.session_id) for s in self._sessions() if s.live.leased]
            if not held:
                continue
            try:
                lost = await self.state.heartbeat(held, self.lease_ttl, time.time())
                for tenant_id, session_id in lost:  # Redis was flushed: take the lease back, uncapped
                    await self.state.acquire_session(tenant_id, session_id, None, self.lease_ttl, time.time())
            except RedisError as exc:
                log.warning("lease heartbeat failed: %s", exc)

    async def _reaper(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.reap_every)
            try:
                reaped = await self.state.reap_expired(time.time())
            except RedisError as exc:
                log.warning("lease reaper failed: %s", exc)
                continue
            for tenant_id, session_id in reaped:
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

    def start(self, owner: ReservationOwner) -> None:
        self._owner = owner
        self._task = asyncio.create_task(self._run(), name=f"voxgate-effects-{self.session_id}")

    def submit(self, action: EffectItem) -> None:
        self._queue.put_nowait(action)

    async def stop(self, timeout: float = 2.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._execute(item)
            except RedisError as exc:
                log.warning("session %s: live state unreachable for %s: %s", self.session_id, type(item).__name__, exc)
                if isinstance(item, ReserveBudget) and self._owner is not None:
                    # Metering continues into the ledger; without shared state we cannot refuse.
                    await self._owner.reservation_answered(item.reservation_id, True)
            except Exception:
                log.exception("session %s: effect %r failed", self.session_id, item)
            finally:
                self._queue.task_done()

    async def _execute(self, item: EffectItem) -> None:
        state, now = self.enforcement.state, time.time()
        limits = BudgetLimits.from_policy(self.policy.budget)
        if isinstance(item, ReserveBudget):
            result = await state.reserve(self.tenant_id, item.reservation_id, item.amount_micro_usd,
                                         limits.daily_micro_usd, limits.monthly_micro_usd, now,
                                         RESERVATION_TTL_S, forced=item.forced)  # fmt: skip
            if self._owner is not None:
                await self._owner.reservation_answered(item.reservation_id, result.granted)
        elif isinstance(item, SettleBudget):
            await self._settle(item.reservation_id or new_id("stl"), item.actual_micro_usd, now, limits)
        elif isinstance(item, AuditEvent):
            self.enforcement.ledger.submit(item)
        elif item[0] == "headroom":  # ("headroom", RateLimitsRecord)
            record: RateLimitsRecord = item[1]
            for lim in record.limits:
                if lim.name == "tokens":
                    await state.record_headroom(lim.limit, lim.remaining, lim.reset_seconds, record.observed_at)
        elif item[0] == "spend":  # spend without a reservation (input transcription)
            await self._settle(item[1], item[2], now, limits)

    async def _settle(self, settle_id: str, actual: int, now: float, limits: BudgetLimits) -> None:
        state = self.enforcement.state
        before = _budget_state(await state.spend(self.tenant_id, now))
        after = _budget_state(await state.settle(self.tenant_id, settle_id, actual, now))
        if not limits.limited:
            return
        for alert in crossed_alerts(before, after, limits):
            self.enforcement.ledger.submit(AuditEvent("budget.alert", self.session_id, self.tenant_id, now,
                                                      {"alert": repr(alert)}))  # fmt: skip
        if is_exhausted(after, limits):
            self.enforcement.ledger.submit(AuditEvent("budget.exhausted", self.session_id, self.tenant_id, now,
                                                      {"spent_day": after.spent_day,
                                                       "spent_month": after.spent_month}))  # fmt: skip
            await state.publish("budget_exhausted", self.tenant_id, {"session_id": self.session_id})

