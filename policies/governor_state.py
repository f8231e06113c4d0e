"""The state a session governor keeps, in parts, and the helpers every entry point shares.

`GovernorState` holds the parts (`SessionMeter`: what upstream billed; `ReservationBook`:
budget reservations; `SessionCaps`: closing for a cap; `SessionCeiling`: the session's
`max_output_tokens`; `Fence`: the end-of-session clear; `Opening`: the held
`session.created`) and what a shell reads of them. The entry points live in
`policies.upstream_events` (server events) and `policies.governor` (the rest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policies.actions import Action, AuditEvent, CloseSession, ErrorDetail, SendToClient, SendToUpstream, error_event
from policies.budget import BudgetLimits, effective_output_ceiling, worst_case_cost_micro_usd
from policies.caps import BUDGET_CAP
from policies.fence import Fence
from policies.opening import Opening
from policies.policy import TenantPolicy
from policies.prices.table import PriceTable
from policies.reservations import ReservationBook
from policies.session_caps import SessionCaps
from policies.session_ceiling import SessionCeiling
from policies.session_meter import SessionIdentity, SessionMeter, SessionTotals


class GovernorState:
    """One session's policy state; see `policies.governor.SessionGovernor` for the entry points."""

    def __init__(
        self,
        identity: SessionIdentity,
        prices: PriceTable,
        policy: TenantPolicy | None = None,
        started_at: float | None = None,
        hold_opening: bool = False,
    ) -> None:
        self.identity = identity
        self.prices = prices
        self.meter = SessionMeter(identity, prices)
        self.expired = False
        self._event_seq = 0
        # Enforcement state (all inert when `policy` is None).
        self.policy = policy
        self.started_at = started_at
        self._limits = BudgetLimits.from_policy(policy.budget) if policy is not None else BudgetLimits()
        self._last_activity = started_at
        self.caps = SessionCaps(self._next_id, self._audit)
        self.book = ReservationBook(
            f"{identity.session_id}:{identity.holder}" if identity.holder else identity.session_id
        )
        self.ceiling = SessionCeiling()
        # After the opening: the client's `session.update`s forwarded and not yet answered (a refused
        # one stays counted: over-counting only lets voxgate's answer through), and the id of
        # voxgate's own update whose `session.updated` the client must not see (`_own_update`).
        self._client_updates = 0
        self._own_update_id: str | None = None
        self.fence = Fence()
        self._in_flight: set[str] = set()
        self._abandoned = False  # the client is gone: responses are cancelled, none is started
        self._ended = False  # `on_session_end` ran: nothing more reaches upstream
        # The opening (docs/governor.md): `session.created` is held until voxgate's own clamp is confirmed.
        clamps = policy is not None and policy.max_output_tokens is not None
        self._opening = Opening(started_at) if hold_opening and clamps else None

    # -- what the shell reads -----------------------------------------------------------

    @property
    def model(self) -> str:
        return self.meter.model

    @property
    def totals(self) -> SessionTotals:
        return self.meter.totals

    @property
    def closed(self) -> CloseSession | None:
        return self.caps.closed

    @property
    def opening(self) -> bool:
        """`session.created` is held until upstream confirms voxgate's own `session.update`: a shell that
        carries the client's socket holds the client's messages, and what goes to the client, meanwhile."""
        return self._opening is not None

    @property
    def responses_in_flight(self) -> bool:
        """A response was started upstream (or asked for) and its `response.done` not seen yet."""
        return bool(self._in_flight or self.book.awaiting_created)

    @property
    def usage_pending(self) -> bool:
        """Upstream owes the usage of a response in flight or of a transcription it has not finished."""
        return bool(self._in_flight or self.book.awaiting_created or self.meter.transcribing)

    @property
    def awaiting_upstream(self) -> bool:
        """After `on_client_gone`: upstream may still start or bill something the ledger lacks —
        the fence is unanswered or usage is pending. A shell that reads on stops when False."""
        return self.fence.waiting or self.usage_pending

    # -- helpers ------------------------------------------------------------------------

    @property
    def _busy(self) -> bool:
        """A response is in flight or a response.create waits for its reservation: a closing waits."""
        return bool(self._in_flight) or self.book.pending is not None

    def _budget_cut(self, now: float, detail: Mapping[str, Any]) -> list[Action]:
        return self.caps.begin(
            BUDGET_CAP,
            now,
            policy=self.policy,
            in_flight=self._in_flight,
            busy=self._busy,
            audit_kind="budget_cut",
            detail=detail,
        )

    def _token_cap_reached(self) -> bool:
        cap = self.policy.max_session_tokens if self.policy is not None else None
        totals = self.meter.totals
        return cap is not None and totals.input_tokens + totals.output_tokens >= cap

    def _worst_case(self, response_override: int | None) -> int:
        policy_ceiling = self.policy.max_output_tokens if self.policy is not None else None
        model = self.meter.model
        output = effective_output_ceiling(response_override, self.ceiling.tokens, policy_ceiling, model)
        price, _ = self.prices.price_for(model)
        return worst_case_cost_micro_usd(output, self.meter.context_estimate, price)

    def _own_update(self, update: Mapping[str, Any]) -> SendToUpstream:
        """Send voxgate's own `session.update`. Its `session.updated` is the next one upstream sends
        when no update of the client's awaits an answer (upstream answers in order): that one is kept
        from the client, which never asked. With one of the client's in flight, which answer is whose
        cannot be told apart, so voxgate's goes through (as before) rather than risk hiding the client's."""
        if self._opening is None and self._client_updates == 0 and self._own_update_id is None:
            self._own_update_id = update["event_id"]
        return SendToUpstream(update)

    def _cancel(self, response_id: str) -> SendToUpstream:
        return SendToUpstream({"type": "response.cancel", "event_id": self._next_id(), "response_id": response_id})

    def _audit(self, kind: str, now: float, detail: Mapping[str, Any]) -> AuditEvent:
        return AuditEvent(kind, self.identity.session_id, self.identity.tenant_id, now, dict(detail))

    def _touch_clock(self, now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        if self._last_activity is None:
            self._last_activity = now

    def _touch(self, now: float) -> None:
        self._touch_clock(now)
        self._last_activity = max(now, self._last_activity or now)

    def _reject(self, message: str, code: str, event: Mapping[str, Any]) -> Sequence[Action]:
        client_event_id = event.get("event_id")
        detail = ErrorDetail(
            message=message, code=code, event_id=client_event_id if isinstance(client_event_id, str) else None
        )
        return (SendToClient(error_event(detail, self._next_id())),)

    def _next_id(self) -> str:
        self._event_seq += 1
        return f"event_vg{self.identity.session_id[-12:]}{self._event_seq:06d}"
