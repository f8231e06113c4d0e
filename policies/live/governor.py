"""`LiveGovernor`: one GPT-Live session's decisions, `(event, now) -> actions`, for any shell.

It polices the configuration (`policies.live.config`), meters usage (`policies.live.meter`)
and enforces the limits: a budget reserved a time window ahead (usage arrives only about
every 15 s), topped up on each usage report and, when reports stop, on the wall clock; the
tenant's duration cap and idle timeout. At a limit it sends `session.close` upstream and
waits `close_wait_s` for `session.closed` (the final usage) before closing; `on_end` books the
rest as an estimate when that never came. The driving contract is in `policies.live`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from policies.actions import (
    Action,
    AuditEvent,
    CloseSession,
    Forward,
    ForwardRewritten,
    RecordSpend,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
)
from policies.budget import BudgetLimits
from policies.live.config import LiveRefusal, LiveRules, police_start, police_update
from policies.live.meter import LiveIdentity, LiveMeter
from policies.live.records import BookLiveUsage, LiveUsageRecord
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.prices.table import PriceTable
from policies.pricing import duration_cost_micro_usd

LiveAction = Action | BookLiveUsage
Phase = Literal["awaiting_start", "starting", "live", "closing", "closed"]

# Close codes (docs/close-codes.md): the Realtime ones for the same limits, and Live's own.
CLOSE_DURATION: Final = 4001
CLOSE_IDLE: Final = 4002
CLOSE_BUDGET: Final = 4003
CLOSE_START_REFUSED: Final = 4010
# One `session.start` per session (on_client_event).
SECOND_START: Final = LiveRefusal(
    "session_already_started", "This session has already been started; open a new session to start another.", "type"
)


@dataclass(frozen=True, slots=True)
class LiveLimitsConfig:
    """How far ahead the budget is reserved, how long a close waits for `session.closed`, and
    how long an unanswered reservation counts as pending."""

    reserve_ahead_s: float = 30.0
    close_wait_s: float = 2.0
    reservation_timeout_s: float = 5.0


def live_error(
    code: str,
    message: str,
    param: str | None,
    event_id: str,
    *,
    type: str = "invalid_request_error",
    client_event_id: str | None = None,
) -> dict[str, Any]:
    """A Live `error` server event as `openai.types.live.ErrorEvent` parses it."""
    return {
        "type": "error",
        "event_id": event_id,
        "client_event_id": client_event_id,
        "error": {"type": type, "code": code, "message": message, "param": param, "client_event_id": client_event_id},
    }


class LiveGovernor:
    """Polices, meters and limits one Live session; never performs I/O or reads a clock."""

    def __init__(
        self,
        identity: LiveIdentity,
        prices: PriceTable,
        policy: TenantPolicy | None,
        started_at: float,
        config: LiveLimitsConfig = LiveLimitsConfig(),
    ) -> None:
        self.identity = identity
        self.prices = prices
        self.config = config
        self.started_at = started_at
        self.phase: Phase = "awaiting_start"
        self.meter: LiveMeter | None = None
        self.upstream_session_id: str | None = None
        # This governor sent the `session.start` (a WebSocket session), and upstream has not confirmed it.
        self._start_unconfirmed = False
        self._set_policy(policy)
        self._last_activity = started_at
        self._held: list[Mapping[str, Any]] = []  # client events behind the held session.start
        self._held_start: Mapping[str, Any] | None = None
        self._pending: tuple[str, int, float] | None = None  # reservation id, amount, asked at
        self._reservations: list[tuple[str, int]] = []  # granted windows not yet released
        self._covered_until = started_at
        self._closing: CloseSession | None = None
        self._close_deadline: float | None = None
        self._ids = 0
        if identity.model:
            self.meter = LiveMeter(identity, prices)

    # -- client side ----------------------------------------------------------------------------

    def note_client_activity(self, now: float) -> None:
        """A client message the shell did not decode (an audio append): resets the idle timer."""
        self._last_activity = now

    def on_client_event(self, event: Mapping[str, Any], now: float) -> list[LiveAction]:
        self._last_activity = now
        kind = event.get("type")
        if self.phase in ("closing", "closed"):
            return []
        if self.phase == "starting":
            self._held.append(event)
            return []
        if self.phase == "awaiting_start":
            if kind != "session.start":
                refusal = LiveRefusal("session_not_started", "The first client event must be 'session.start'.", "type")
                return self._refuse_start(refusal, event, now)
            return self._start(event, now)
        if kind == "session.start":
            # One start per session: a second one (say, after upstream refused the first) would reach
            # upstream unpoliced, on a model the meter and the per-model lease never counted.
            return [SendToClient(self._error(SECOND_START, event))]
        if kind == "session.update":
            policed = police_update(event.get("session"), self.rules)
            if isinstance(policed, LiveRefusal):
                return [SendToClient(self._error(policed, event))]
            if not policed.clamped:
                return [Forward()]
            return [
                self._audit("live_clamp", now, paths=list(policed.clamped)),
                ForwardRewritten({**event, "session": policed.session}),
            ]
        return [Forward()]

    def on_client_gone(self, now: float) -> list[LiveAction]:
        """The client left: close upstream's session so its final usage arrives (`awaiting_upstream`)."""
        if self.phase != "live":
            self.phase = "closed"
            return []
        self.phase = "closing"
        self._close_deadline = now + self.config.close_wait_s
        return [SendToUpstream(self._close_event())]

    @property
    def awaiting_upstream(self) -> bool:
        """Closing, and upstream's `session.closed` (the final usage) has not arrived yet."""
        return self.phase == "closing" and self.meter is not None and not self.meter.closed

    def _start(self, event: Mapping[str, Any], now: float) -> list[LiveAction]:
        policed = police_start(event.get("session"), self.rules, self.prices)
        if isinstance(policed, LiveRefusal):
            return self._refuse_start(policed, event, now)
        self.identity = LiveIdentity(
            self.identity.session_id, self.identity.tenant_id, policed.model, self.identity.transport
        )
        self.meter = LiveMeter(self.identity, self.prices)
        actions: list[LiveAction] = []
        forwarded: Mapping[str, Any] = event
        if policed.clamped:
            forwarded = {**event, "session": policed.session}
            actions.append(self._audit("live_clamp", now, paths=list(policed.clamped)))
        if self.limits.limited:
            self.phase, self._held_start = "starting", forwarded
            return [*actions, self._reserve(now)]
        self.phase, self._start_unconfirmed = "live", True
        return [*actions, ForwardRewritten(forwarded) if policed.clamped else Forward()]

    def _refuse_start(self, refusal: LiveRefusal, event: Mapping[str, Any], now: float) -> list[LiveAction]:
        self.phase = "closed"
        return [
            self._audit("close_start_refused", now, code=refusal.code, param=refusal.param),
            SendToClient(self._error(refusal, event)),
            CloseSession(CLOSE_START_REFUSED, "session.start refused", "start_refused"),
        ]

    # -- upstream side --------------------------------------------------------------------------

    def on_server_event(self, event: Mapping[str, Any], now: float) -> list[LiveAction]:
        kind = event.get("type")
        meter = self.meter
        if kind == "session.started":
            session = event.get("session")
            upstream_id = session.get("id") if isinstance(session, Mapping) else None
            self.upstream_session_id = upstream_id if isinstance(upstream_id, str) else None
            self._start_unconfirmed = False
        elif kind == "error" and self._start_unconfirmed and self.phase == "live":
            # Upstream refused the start: the session never began, and a second start is refused
            # (SECOND_START), so it ends here rather than holding its lease and budget until idle.
            self.phase, self._start_unconfirmed = "closed", False
            detail = event.get("error")
            code = detail.get("code") if isinstance(detail, Mapping) else None
            return [
                self._audit("close_start_refused", now, code=code, by="upstream"),
                Forward(),
                CloseSession(CLOSE_START_REFUSED, "session.start refused", "start_refused"),
            ]
        if meter is None:
            return [Forward()]
        if kind == "session.usage.updated":
            return [*self._book(meter.on_usage(event.get("usage"), now)), *self._refresh_window(now), Forward()]
        if kind == "session.closed":
            booked = self._book(meter.on_usage(event.get("usage"), now, final=True))
            if self.phase == "closing" and self._closing is not None:
                self.phase = "closed"
                return [*booked, Forward(), self._closing]
            return [*booked, Forward()]
        if kind == "response.event":
            return [*self._book([r for r in [meter.on_response_event(event, now)] if r is not None]), Forward()]
        if kind == "decision.event":
            return [*self._book([r for r in [meter.on_decision_event(event, now)] if r is not None]), Forward()]
        return [Forward()]

    def _book(self, records: list[LiveUsageRecord]) -> list[LiveAction]:
        actions: list[LiveAction] = []
        for record in records:
            spend_id = f"{record.session_id}:{record.kind}:{record.usage_id}"
            actions += [BookLiveUsage(record), RecordSpend(spend_id, record.cost_micro_usd)]
        return actions

    # -- limits ---------------------------------------------------------------------------------

    def opening(self, now: float) -> list[LiveAction]:
        """A session created over HTTP (WebRTC): it is live at once and its initialisation charge is booked."""
        self.phase = "live"
        return self._book(self.meter.opening(now)) if self.meter is not None else []

    def on_tick(self, now: float) -> list[LiveAction]:
        if self.phase == "closing":
            if self._close_deadline is not None and now >= self._close_deadline:
                self.phase = "closed"
                return [self._closing] if self._closing is not None else []
            return []
        pending = self._pending
        if pending is not None and now >= pending[2] + self.config.reservation_timeout_s:
            return self.on_reservation(pending[0], False, now)
        if self.phase != "live":
            return []
        policy = self.policy
        if policy.max_session_seconds is not None and now >= self.started_at + policy.max_session_seconds:
            return self._begin_close(
                now, CLOSE_DURATION, "session duration limit reached", "duration_cap", "session_duration_exceeded"
            )
        if policy.idle_timeout_seconds is not None and now >= self._last_activity + policy.idle_timeout_seconds:
            return self._begin_close(now, CLOSE_IDLE, "session idle timeout", "idle_timeout", "idle_timeout")
        if self.limits.limited and pending is None and now >= self._covered_until:
            return [self._reserve(now)]  # no usage report in a whole window: the wall-clock backstop
        return []

    def next_deadline(self) -> float | None:
        times = [self._close_deadline if self.phase == "closing" else None]
        if self._pending is not None:
            times.append(self._pending[2] + self.config.reservation_timeout_s)
        if self.phase == "live":
            policy = self.policy
            if policy.max_session_seconds is not None:
                times.append(self.started_at + policy.max_session_seconds)
            if policy.idle_timeout_seconds is not None:
                times.append(self._last_activity + policy.idle_timeout_seconds)
            if self.limits.limited and self._pending is None:
                times.append(self._covered_until)
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def on_reservation(self, reservation_id: str, granted: bool, now: float) -> list[LiveAction]:
        pending = self._pending
        if pending is None or pending[0] != reservation_id:
            return []
        self._pending = None
        if self.phase == "closed":  # answered after the end: give it back
            return [SettleBudget(reservation_id, pending[1], 0)] if granted else []
        if granted:
            self._reservations.append((reservation_id, pending[1]))
            self._covered_until = now + self.config.reserve_ahead_s
            if self.phase != "starting" or self._held_start is None:
                return []
            self.phase, self._start_unconfirmed = "live", True
            start, held = self._held_start, self._held
            self._held_start, self._held = None, []
            released: list[LiveAction] = [SendToUpstream(start)]
            for event in held:
                released += [
                    SendToUpstream(event) if isinstance(a, Forward) else a for a in self.on_client_event(event, now)
                ]
            return [a if not isinstance(a, ForwardRewritten) else SendToUpstream(a.event) for a in released]
        if self.phase == "starting":
            self.phase = "closed"
            refusal = LiveRefusal(
                "budget_exhausted", "This tenant's budget is exhausted.", "", type="insufficient_quota"
            )
            error = self._error(refusal, self._held_start or {})
            return [SendToClient(error), CloseSession(CLOSE_BUDGET, "budget exhausted", "budget_exhausted")]
        return self._budget_close(now)

    def on_budget_exhausted(self, now: float) -> list[LiveAction]:
        """The tenant's shared budget ran out (this session's settle or a broadcast)."""
        return self._budget_close(now) if self.limits.limited and self.phase == "live" else []

    def on_policy_changed(self, policy: TenantPolicy, now: float) -> list[LiveAction]:
        self._set_policy(policy)
        return []

    def on_end(self, now: float) -> list[LiveAction]:
        """The session ended: book an estimate without `session.closed`, release the reservations."""
        self.phase = "closed"
        actions = self._book(self.meter.estimate_end(now)) if self.meter is not None else []
        actions += [SettleBudget(rid, amount, 0) for rid, amount in self._reservations]
        self._reservations = []
        return actions

    def _refresh_window(self, now: float) -> list[LiveAction]:
        """A usage report booked the time so far: release the windows held, reserve the next one."""
        if not self.limits.limited or self.phase != "live" or self._pending is not None:
            return []
        released: list[LiveAction] = [SettleBudget(rid, amount, 0) for rid, amount in self._reservations]
        self._reservations = []
        return [*released, self._reserve(now)]

    def _reserve(self, now: float) -> ReserveBudget:
        rate = self.meter.price if self.meter is not None else self.prices.duration_price_for("")[0]
        amount = duration_cost_micro_usd(rate, active_ms=int(self.config.reserve_ahead_s * 1000))
        reservation_id = self._next_id("lrv")
        self._pending = (reservation_id, amount, now)
        return ReserveBudget(reservation_id, amount)

    def _budget_close(self, now: float) -> list[LiveAction]:
        return self._begin_close(
            now, CLOSE_BUDGET, "budget exhausted", "budget_exhausted", "budget_exhausted", "insufficient_quota"
        )

    def _begin_close(
        self,
        now: float,
        code: int,
        reason: str,
        end_reason: str,
        error_code: str,
        error_type: str = "invalid_request_error",
    ) -> list[LiveAction]:
        if self.phase != "live":
            return []
        self.phase = "closing"
        self._closing = CloseSession(code, reason, end_reason)
        self._close_deadline = now + self.config.close_wait_s
        error = live_error(
            error_code, f"voxgate closed the session: {reason}.", None, self._next_id("vgev"), type=error_type
        )
        return [
            self._audit(f"close_{end_reason}", now),
            SendToClient(error),
            SendToUpstream(self._close_event()),
        ]

    # -- helpers --------------------------------------------------------------------------------

    def _set_policy(self, policy: TenantPolicy | None) -> None:
        self.policy = policy or UNRESTRICTED
        self.rules = LiveRules.from_policy(self.policy, self.prices)
        self.limits = BudgetLimits.from_policy(self.policy.budget) if policy is not None else BudgetLimits()

    def _close_event(self) -> dict[str, Any]:
        return {"type": "session.close", "event_id": self._next_id("vgev")}

    def _error(self, refusal: LiveRefusal, event: Mapping[str, Any]) -> dict[str, Any]:
        client_id = event.get("event_id")
        return live_error(
            refusal.code,
            refusal.message,
            refusal.param or None,
            self._next_id("vgev"),
            type=refusal.type,
            client_event_id=client_id if isinstance(client_id, str) else None,
        )

    def _audit(self, kind: str, now: float, **detail: Any) -> AuditEvent:
        return AuditEvent(kind, self.identity.session_id, self.identity.tenant_id, now, detail)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        holder = self.identity.holder
        return (
            f"{prefix}_{self.identity.session_id}_{holder}_{self._ids}"
            if holder
            else f"{prefix}_{self.identity.session_id}_{self._ids}"
        )
