"""Closing a session for a cap: the first cause wins, an in-flight response may finish first.

Duration, idle time, budget and session tokens each close a session (`policies.caps`). A cap
starts a *closing*: new responses are refused from then on; the response in flight finishes
(or, for a budget cut with `at_limit: cancel_response`, is cancelled); the session closes
when nothing is in flight or at the closing's deadline, whichever comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.actions import Action, AuditEvent, CloseSession, ErrorDetail, SendToClient, SendToUpstream, error_event
from policies.caps import BUDGET_CAP, DURATION_CAP, IDLE_CAP, Cap
from policies.policy import TenantPolicy

CAP_GRACE_S: Final = 5.0  # an in-flight response may finish this long after a cap is hit
CANCEL_CLOSE_S: Final = 0.9  # after a budget cut with cancel_response, close by then (docs promise 1 s)

Audit = Callable[[str, float, Mapping[str, Any]], AuditEvent]


@dataclass(slots=True)
class Closing:
    cap: Cap
    deadline: float


class SessionCaps:
    """One session's closing state and the actions that close it."""

    def __init__(self, next_id: Callable[[], str], audit: Audit) -> None:
        self._next_id = next_id
        self._audit = audit
        self.closed: CloseSession | None = None
        self.closing: Closing | None = None
        self.exhausted = False

    def refusing(self) -> Cap | None:
        """The cap a new `response.create` is refused for, if any."""
        if self.closing is not None:
            return self.closing.cap
        return BUDGET_CAP if self.exhausted else None

    def error(self, cap: Cap, client_event_id: str | None) -> dict[str, Any]:
        detail = ErrorDetail(message=cap.message, type=cap.error_type, code=cap.error_code, event_id=client_event_id)
        return error_event(detail, self._next_id())

    def begin(
        self,
        cap: Cap,
        now: float,
        *,
        policy: TenantPolicy | None,
        in_flight: Iterable[str],
        busy: bool,
        deadline: float | None = None,
        audit_kind: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> list[Action]:
        """Start closing for `cap` (the first cause wins): refuse new responses from now on,
        let the in-flight ones finish (or cancel them), close at once if nothing is `busy`."""
        if self.closed is not None:
            return []
        actions: list[Action] = []
        if cap is BUDGET_CAP:
            if self.exhausted:
                return []
            self.exhausted = True
        if audit_kind is not None:
            actions.append(self._audit(audit_kind, now, detail or {}))
        if self.closing is not None:
            return actions
        cancel = cap is BUDGET_CAP and policy is not None and policy.budget.at_limit == "cancel_response"
        if deadline is None:
            deadline = now + (CANCEL_CLOSE_S if cancel else CAP_GRACE_S)
        self.closing = Closing(cap, deadline)
        if cancel:
            for response_id in sorted(in_flight):
                actions.append(
                    SendToUpstream({"type": "response.cancel", "event_id": self._next_id(), "response_id": response_id})
                )
        if not busy:
            actions.extend(self.close(cap, now))
        return actions

    def close(self, cap: Cap, now: float) -> list[Action]:
        if self.closed is not None:
            return []
        self.closed = CloseSession(cap.code, cap.reason, cap.end_reason)
        actions: list[Action] = [SendToClient(self.error(cap, None))]
        # Reservations still open stay open: the shell cancels their responses and reads upstream
        # for their `response.done`, which settles them at the real cost (`on_session_end`
        # settles at the worst case whatever never came).
        if cap is not IDLE_CAP:
            actions.append(self._audit(f"close_{cap.end_reason}", now, {"code": cap.code}))
        actions.append(self.closed)
        return actions

    def idle_now(self, now: float) -> list[Action]:
        """Nothing is in flight any more: a closing session closes now."""
        if self.closing is None or self.closed is not None:
            return []
        return self.close(self.closing.cap, now)

    def deadlines(
        self, policy: TenantPolicy, started_at: float | None, last_activity: float | None, idle_counts: bool
    ) -> list[float]:
        """When `tick` next has something to do for a cap."""
        if self.closing is not None:
            return [self.closing.deadline]
        if started_at is None:
            return []
        times: list[float] = []
        if policy.max_session_seconds is not None:
            times.append(started_at + policy.max_session_seconds)
        if policy.idle_timeout_seconds is not None and last_activity is not None and idle_counts:
            times.append(last_activity + policy.idle_timeout_seconds)
        return times

    def tick(
        self,
        now: float,
        policy: TenantPolicy,
        started_at: float,
        last_activity: float,
        *,
        in_flight: Iterable[str],
        busy: bool,
    ) -> list[Action]:
        """Time passed: a closing's deadline, the duration cap, the idle timeout."""
        if self.closing is not None:
            return self.close(self.closing.cap, now) if now >= self.closing.deadline else []
        if policy.max_session_seconds is not None and now >= started_at + policy.max_session_seconds:
            deadline = started_at + policy.max_session_seconds + CAP_GRACE_S
            return self.begin(DURATION_CAP, now, policy=policy, in_flight=in_flight, busy=busy, deadline=deadline)
        idle_for = now - last_activity
        if policy.idle_timeout_seconds is not None and not busy and idle_for >= policy.idle_timeout_seconds:
            return self.close(IDLE_CAP, now)
        return []
