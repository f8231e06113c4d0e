"""Executing what a session's governor decided: the only place a session's side effects happen.

`SessionEffects` (one per session) takes the typed actions of `policies.actions`, in order.
Ledger actions (`Persist`, `AuditEvent`) are queued at once; the shared-state ones
(`ReserveBudget`, `SettleBudget`, `RecordSpend`, `NoteHeadroom`) run in order on one task,
off the frame path; what concerns the transport (`Forward`, `ForwardRewritten`,
`SendToClient`, `SendToUpstream`, `CloseSession`) comes back as one `Verdict`.

It depends only on the ports below (what `gateway.session.enforcement.Enforcement` offers a
session), never on the session or its transport: a reservation's answer goes back through
the `ReservationOwner` given to `start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ids import new_id
from gateway.ledger.writer import LedgerWriter
from gateway.livestate import LiveStateBackend, ReserveResult, SpendState
from gateway.session.verdict import HOLD, PASS, Verdict, encode
from gateway.telemetry import NO_TRACE, SessionTrace
from policies.actions import (
    Action,
    AuditEvent,
    CloseSession,
    Forward,
    ForwardRewritten,
    NoteHeadroom,
    Persist,
    RateLimitsRecord,
    RecordSpend,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
    SharedAction,
    TranscriptionRecord,
    UsageRecord,
)
from policies.budget import BudgetAlert, BudgetLimits, BudgetState, crossed_alerts, is_exhausted, window_keys
from policies.policy import TenantPolicy

if TYPE_CHECKING:
    from gateway.livestate.repair import LiveStateRepairs
    from gateway.metrics import GatewayMetrics

log = logging.getLogger("voxgate.enforcement")

RESERVATION_TTL_S = 600.0


class SharedState(Protocol):
    """The port a session's effects use: the shared live state, its repairs and the ledger."""

    state: LiveStateBackend
    ledger: LedgerWriter
    repairs: LiveStateRepairs

    def store_failed(self) -> None: ...

    async def rebuild_spend(self, tenant_id: str, now: float) -> SpendState: ...

    def note_headroom(self, record: RateLimitsRecord) -> None: ...

    async def release(self, tenant_id: str, session_id: str) -> None: ...


class ReservationOwner(Protocol):
    """Who hears back about a reservation: the session's `LiveSession`."""

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None: ...


class SessionTotals:
    """What a session's responses added up to: its summary log line and its span's last attributes."""

    __slots__ = ("cost_micro_usd", "input_tokens", "output_tokens", "responses")

    def __init__(self) -> None:
        self.responses = self.input_tokens = self.output_tokens = self.cost_micro_usd = 0

    def add(self, record: UsageRecord) -> None:
        self.responses += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cost_micro_usd += record.cost_micro_usd


def budget_state(spend: SpendState) -> BudgetState:
    return BudgetState(spend.spent_day, spend.spent_month, spend.reserved_day, spend.reserved_month)


def alert_detail(alert: BudgetAlert, now: float) -> dict[str, Any]:
    """A `budget.alert` audit row's detail: what the webhook body carries (docs/finance.md)."""
    day, month = window_keys(now)
    return {
        "period": alert.window,
        "period_start": day if alert.window == "day" else f"{month}-01",
        "threshold": alert.threshold,
        "budget_micro_usd": alert.limit,
        "spent_micro_usd": alert.spent,
    }


class SessionEffects:
    """Executes one session's actions: ledger at once, shared state in order, the rest as a `Verdict`."""

    def __init__(
        self,
        shared: SharedState,
        tenant_id: str,
        session_id: str,
        policy: TenantPolicy,
        metrics: GatewayMetrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        trace: SessionTrace = NO_TRACE,
    ) -> None:
        self.shared = shared
        self.ledger = shared.ledger
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self.trace = trace
        self.totals = SessionTotals()
        self._queue: asyncio.Queue[SharedAction] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._owner: ReservationOwner | None = None
        self._current: SharedAction | None = None

    # -- on the frame path ----------------------------------------------------------------

    def execute(self, actions: Sequence[Action]) -> Verdict:
        """Perform the ledger and shared-state actions; return what the transport must do."""
        forward = False
        to_client: list[str] = []
        to_upstream: list[str] = []
        close: CloseSession | None = None
        rewritten: str | None = None
        durable: asyncio.Future[None] | None = None
        for action in actions:
            if isinstance(action, Forward):
                forward = True
            elif isinstance(action, Persist):
                durable = self._persist(action) or durable
            elif isinstance(action, ReserveBudget | SettleBudget | RecordSpend | NoteHeadroom):
                self.submit(action)
            elif isinstance(action, AuditEvent):
                self.ledger.submit(action)
                if self.metrics is not None:
                    self.metrics.policy_decisions.labels(action.kind).inc()
            elif isinstance(action, SendToClient):
                to_client.append(encode(action.event))
            elif isinstance(action, SendToUpstream):
                to_upstream.append(encode(action.event))
            elif isinstance(action, ForwardRewritten):
                rewritten = encode(action.event)
            elif isinstance(action, CloseSession):
                close = action
        if not (to_client or to_upstream or close or rewritten or durable):
            return PASS if forward else HOLD
        if rewritten is not None:
            # A rewritten event replaces the original on its way to the same destination.
            return Verdict(False, tuple(to_client), (rewritten, *to_upstream), close, durable)
        return Verdict(forward, tuple(to_client), tuple(to_upstream), close, durable)

    def _persist(self, action: Persist) -> asyncio.Future[None] | None:
        record = action.record
        if isinstance(record, UsageRecord | TranscriptionRecord):
            durable = self.ledger.submit_durable(record)
            if isinstance(record, UsageRecord):
                self._metered(record, durable)
            return durable
        self.ledger.submit(record)
        return None

    def _metered(self, record: UsageRecord, durable: asyncio.Future[None]) -> None:
        """A billed response: the session's totals, its span, the money and token counters."""
        self.totals.add(record)
        self.trace.response_done(
            record.response_id,
            record.status,
            record.input_tokens,
            record.output_tokens,
            record.cost_micro_usd,
            durable,
        )
        if self.metrics is not None:
            metrics, tenant, model = self.metrics, self.tenant_id, record.model
            metrics.responses.labels(model, record.status).inc()
            metrics.cost.labels(tenant, model).inc(record.cost_micro_usd)
            metrics.input_tokens.labels(tenant, model).inc(record.input_tokens)
            metrics.output_tokens.labels(tenant, model).inc(record.output_tokens)

    # -- the shared state, off the frame path ---------------------------------------------

    def start(self, owner: ReservationOwner) -> None:
        self._owner = owner
        self._task = asyncio.create_task(self._run(), name=f"voxgate-effects-{self.session_id}")

    def submit(self, action: SharedAction) -> None:
        self._queue.put_nowait(action)

    async def stop(self, timeout: float = 2.0) -> None:
        """Finish the queued effects within `timeout`; settles still pending then are handed to the
        repair queue (their tenant's counters get rebuilt from the ledger), never dropped."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout(timeout):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        left = [] if self._current is None else [self._current]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for item in left:
            self._settle_failed(item)

    async def release_lease(self) -> None:
        """Give the session's concurrency lease back (retried in the background if the store is down)."""
        await self.shared.release(self.tenant_id, self.session_id)

    def _settle_failed(self, item: SharedAction) -> None:
        if isinstance(item, SettleBudget):
            self.shared.repairs.settle_failed(self.tenant_id, item.reservation_id)
        elif isinstance(item, RecordSpend):
            self.shared.repairs.settle_failed(self.tenant_id, None)

    async def _run(self) -> None:
        while True:
            item = self._current = await self._queue.get()
            try:
                await self._execute(item)
            except RedisError as exc:
                log.warning("session %s: live state unreachable for %s: %s", self.session_id, type(item).__name__, exc)
                self.shared.store_failed()
                await self._failed(item)
            except Exception:
                log.exception("session %s: effect %r failed", self.session_id, item)
                await self._failed(item)
            finally:
                self._queue.task_done()
            # Not in `finally`: an item cut off by `stop()`'s cancel stays `_current`, so `stop()`
            # hands it to the repair queue instead of dropping it.
            self._current = None

    async def _failed(self, item: SharedAction) -> None:
        self._settle_failed(item)
        if isinstance(item, ReserveBudget) and self._owner is not None:
            # Metering continues into the ledger; without shared state we cannot refuse.
            await self._owner.reservation_answered(item.reservation_id, True)

    async def _execute(self, item: SharedAction) -> None:
        now = self.clock.time()
        limits = BudgetLimits.from_policy(self.policy.budget)
        if isinstance(item, ReserveBudget):
            result = await self._reserve(item, limits, now)
            if result.refused_by == "unknown":  # counters lost (Redis restarted, or forgotten): rebuild first
                await self.shared.rebuild_spend(self.tenant_id, now)
                result = await self._reserve(item, limits, self.clock.time())
            if result.refused_by == "unknown":  # rebuilt, then lost again: cannot check, cannot refuse
                log.warning("session %s: budget counters unknown after a rebuild; granting", self.session_id)
            if self._owner is not None:
                await self._owner.reservation_answered(
                    item.reservation_id, result.granted or result.refused_by == "unknown"
                )
        elif isinstance(item, SettleBudget):
            await self._settle(item.reservation_id or new_id("stl"), item.actual_micro_usd, now, limits)
        elif isinstance(item, RecordSpend):
            await self._settle(item.spend_id, item.amount_micro_usd, now, limits)
        else:
            self.shared.note_headroom(item.record)

    async def _reserve(self, item: ReserveBudget, limits: BudgetLimits, now: float) -> ReserveResult:
        return await self.shared.state.reserve(
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
        state = self.shared.state
        after = budget_state(await state.settle(self.tenant_id, settle_id, actual, now))
        if not limits.limited:  # no alert or exhaustion to detect
            return
        # `before` comes from the same atomic settle: read apart, concurrent settles would all see
        # the old total and each report the same crossing. The `budget.alert` row claims its
        # outbox row once per tenant, period and threshold (migrations/0009_budget_alerts.sql).
        before = replace(after, spent_day=after.spent_day - actual, spent_month=after.spent_month - actual)
        for alert in crossed_alerts(before, after, limits):
            self.ledger.submit(
                AuditEvent("budget.alert", self.session_id, self.tenant_id, now, alert_detail(alert, now))
            )
        if is_exhausted(after, limits):
            detail = {
                "spent_day": after.spent_day,
                "spent_month": after.spent_month,
                "reserved_day": after.reserved_day,
                "reserved_month": after.reserved_month,
            }
            self.ledger.submit(AuditEvent("budget.exhausted", self.session_id, self.tenant_id, now, detail))
            await state.publish("budget_exhausted", self.tenant_id, {"session_id": self.session_id})
