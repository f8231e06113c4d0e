"""The per-session governor: events and time in, actions out.

One `SessionGovernor` lives as long as one Realtime session, whatever transport carries
it (proxied WebSocket, WebRTC sideband). The shell feeds it every client and server
event it decodes, plus ticks, always with an explicit `now` (Unix seconds), and executes
the actions it returns in order. It never raises on bad input: a message it cannot
understand becomes an `error` event for the client. See docs/governor.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from policies.actions import (
    FORWARD,
    FORWARD_ONLY,
    NOTHING,
    Action,
    AuditEvent,
    CloseSession,
    ErrorDetail,
    Forward,
    ForwardRewritten,
    Persist,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SessionInfoRecord,
    SettleBudget,
    error_event,
)
from policies.budget import (
    B64_CHARS_PER_AUDIO_TOKEN,
    BudgetLimits,
    effective_output_ceiling,
    item_token_estimate,
    worst_case_cost_micro_usd,
)
from policies.clamp import BETA_TOKENS, GA_TOKENS, Refused, Rewritten, police_client_event
from policies.metering import (
    as_int,
    rate_limits_record,
    read_session_config,
    transcription_record,
    usage_record,
)
from policies.policy import TenantPolicy
from policies.pricing import PriceTable

# Close codes a shell uses; documented in docs/close-codes.md.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BAD_GATEWAY = 1014
# Policy closes (docs/close-codes.md, "Policy closes").
CLOSE_DURATION_CAP = 4001
CLOSE_IDLE_TIMEOUT = 4002
CLOSE_BUDGET_EXHAUSTED = 4003
CLOSE_SESSION_TOKEN_CAP = 4004

CAP_GRACE_S: Final = 5.0  # an in-flight response may finish this long after a cap is hit
CANCEL_CLOSE_S: Final = 0.9  # after a budget cut with cancel_response, close by then (docs promise 1 s)
RESERVATION_TIMEOUT_S: Final = 5.0  # an unanswered reservation counts as refused
MAX_TRACKED_CLEARS: Final = 1024  # the client's clears awaiting an answer, remembered in order


@dataclass(frozen=True, slots=True)
class _Cap:
    """Why a session is closing: what the client is told and what the row records."""

    code: int
    reason: str
    end_reason: str
    error_code: str
    message: str
    error_type: str = "invalid_request_error"


DURATION_CAP: Final = _Cap(
    CLOSE_DURATION_CAP,
    "session duration limit reached",
    "duration_cap",
    "session_duration_exceeded",
    "The session reached its maximum duration.",
)
IDLE_CAP: Final = _Cap(
    CLOSE_IDLE_TIMEOUT, "session idle timeout", "idle_timeout", "idle_timeout", "The session was idle for too long."
)
BUDGET_CAP: Final = _Cap(
    CLOSE_BUDGET_EXHAUSTED,
    "budget exhausted",
    "budget_exhausted",
    "budget_exhausted",
    "This tenant's budget is exhausted.",
    "insufficient_quota",
)
TOKEN_CAP: Final = _Cap(
    CLOSE_SESSION_TOKEN_CAP,
    "session token limit reached",
    "session_token_cap",
    "session_token_limit",
    "The session reached its token limit.",
)


@dataclass(slots=True)
class _Reservation:
    reservation_id: str
    amount: int
    forced: bool = False
    event_id: str | None = None  # of the forwarded response.create, to match upstream errors


@dataclass(slots=True)
class _Pending:
    """A client response.create held until the shell answers its reservation."""

    reservation: _Reservation
    event: dict[str, Any]
    client_event_id: str | None
    since: float
    held: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Closing:
    cap: _Cap
    deadline: float


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session belongs to, fixed at admission."""

    session_id: str
    tenant_id: str
    model: str
    intent: str = "realtime"


@dataclass(slots=True)
class SessionTotals:
    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    transcription_cost_micro_usd: int = 0


class SessionGovernor:
    """Meters one Realtime session; later policies extend the same three entry points."""

    def __init__(
        self,
        identity: SessionIdentity,
        prices: PriceTable,
        policy: TenantPolicy | None = None,
        started_at: float | None = None,
    ) -> None:
        self.identity = identity
        self.prices = prices
        self.model = identity.model
        self.voice: str | None = None
        self.transcription_model: str | None = None
        self.upstream_session_id: str | None = None
        self.totals = SessionTotals()
        self.expired = False
        self._seen_responses: set[str] = set()
        self._seen_transcriptions: set[tuple[str, int]] = set()
        self._event_seq = 0
        # Enforcement state (all inert when `policy` is None).
        self.policy = policy
        self.started_at = started_at
        self.closed: CloseSession | None = None
        self.exhausted = False
        self._limits = BudgetLimits.from_policy(policy.budget) if policy is not None else BudgetLimits()
        self._last_activity = started_at
        self._session_type = "realtime"
        self._session_tokens: int | None = None  # the session's max_output_tokens (None = "inf")
        self._session_clamped = False  # upstream is known to carry the policy ceiling
        self._pending: _Pending | None = None
        self._awaiting_created: deque[_Reservation] = deque()
        self._by_response: dict[str, _Reservation] = {}
        self._settled_at_end: set[str] = set()  # responses whose reservation `on_session_end` settled
        self._in_flight: set[str] = set()
        self._context_tokens = 0
        self._added_tokens = 0
        self._reservation_seq = 0
        self._closing: _Closing | None = None
        self._abandoned = False  # the client is gone: responses are cancelled, none is started
        self._ended = False  # `on_session_end` ran: nothing more reaches upstream
        # The fence (`on_client_gone`): an `input_audio_buffer.clear` upstream answers only after
        # everything sent before it, so a response server VAD started from earlier audio is known by then.
        self._fence_id: str | None = None
        self._fence_answered = False
        self._clears_unanswered = 0  # clears sent upstream (the client's and the fence) not yet answered
        self._client_clear_ids: list[str | None] = []  # the client's clears in flight, oldest first
        self._transcribing: set[str] = set()  # committed input audio items whose transcription is not done

    @property
    def responses_in_flight(self) -> bool:
        """A response was started upstream (or asked for) and its `response.done` not seen yet."""
        return bool(self._in_flight or self._awaiting_created)

    @property
    def usage_pending(self) -> bool:
        """Upstream owes the usage of a response in flight or of a transcription it has not finished."""
        return bool(self._in_flight or self._awaiting_created or self._transcribing)

    @property
    def awaiting_upstream(self) -> bool:
        """After `on_client_gone`: upstream may still start or bill something the ledger lacks —
        the fence is unanswered or usage is pending. A shell that reads on stops when False."""
        return (self._fence_id is not None and not self._fence_answered) or self.usage_pending

    # -- entry points -------------------------------------------------------------------

    def on_client_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded client event. Returns what to do with it."""
        self._touch(now)
        if not isinstance(event.get("type"), str):
            return self._reject("The event must be an object with a string 'type'.", "invalid_event", event)
        if self.closed is not None:
            return NOTHING
        if self._pending is not None and event["type"] != "input_audio_buffer.append":
            # Keep order: nothing overtakes a response.create waiting for its reservation (audio
            # appends aside: they only fill the input buffer, as the undecoded ones do).
            self._pending.held.append(event)
            return NOTHING
        return tuple(self._client_event(event, now, held=False))

    def on_client_garbage(self, reason: str, now: float) -> Sequence[Action]:
        """A client message that is not a JSON object: refuse it, forward nothing."""
        self._touch(now)
        return (SendToClient(error_event(ErrorDetail(message=reason, code="invalid_json"), self._next_id())),)

    def note_client_activity(self, now: float, audio_b64_chars: int = 0) -> None:
        """A client message the shell did not decode (an audio append): it is activity,
        and `audio_b64_chars` of base64 audio will join the context."""
        # `_touch` and `audio_b64_tokens`, inlined: this runs for every audio frame.
        if self.started_at is None:
            self.started_at = now
        last = self._last_activity
        if last is None or now > last:
            self._last_activity = now
        if audio_b64_chars > 0:
            self._added_tokens += -(-audio_b64_chars // B64_CHARS_PER_AUDIO_TOKEN)

    def on_server_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded server event. Returns what to do with it."""
        self._touch_clock(now)
        kind = event.get("type")
        if kind == "response.done":
            return self._response_done(event, now)
        if kind == "response.created":
            return self._response_created(event, now)
        if kind == "rate_limits.updated":
            return self._rate_limits(event, now)
        if kind in ("session.created", "session.updated"):
            return self._session_config(event)
        if kind == "conversation.item.input_audio_transcription.completed":
            self._transcribing.discard(str(event.get("item_id")))
            return self._transcription(event, now)
        if kind == "input_audio_buffer.committed":
            item_id = event.get("item_id")
            if self.transcription_model is not None and isinstance(item_id, str):
                self._transcribing.add(item_id)  # upstream bills its transcription when it completes
            return FORWARD_ONLY
        if kind == "conversation.item.input_audio_transcription.failed":
            self._transcribing.discard(str(event.get("item_id")))
            return FORWARD_ONLY
        if kind == "input_audio_buffer.cleared":
            if self._client_clear_ids:  # answered in order: the oldest client clear is the one answered
                self._client_clear_ids.pop(0)
            self._clear_answered()
            return FORWARD_ONLY
        if kind == "error":
            error = event.get("error")
            if isinstance(error, Mapping):
                if error.get("code") == "session_expired":
                    self.expired = True
                failed = error.get("event_id")
                if self._fence_id is not None and failed == self._fence_id:
                    self._fence_answered = True  # refused, but answered: everything before it was processed
                elif isinstance(failed, str) and failed in self._client_clear_ids:
                    self._client_clear_ids.remove(failed)  # a client clear upstream refused is answered too
                    self._clear_answered()
                return self._upstream_error(error)
        return FORWARD_ONLY

    def _clear_answered(self) -> None:
        # Upstream answers clears in the order they were sent: the fence is answered with the last one.
        self._clears_unanswered = max(0, self._clears_unanswered - 1)
        if self._fence_id is not None and self._clears_unanswered == 0:
            self._fence_answered = True

    def on_reservation(self, reservation_id: str, granted: bool, now: float) -> Sequence[Action]:
        """The shell's answer to a `ReserveBudget`. Unknown ids are ignored."""
        pending = self._pending
        if pending is not None and pending.reservation.reservation_id == reservation_id:
            actions = self._answer_pending(pending, granted, now)
            if not granted:  # shared state refused: the budget cannot cover a response, so cut the session
                actions.extend(
                    self._begin_close(BUDGET_CAP, now, audit_kind="budget_cut", detail={"cause": "reservation_refused"})
                )
            return tuple(actions)
        for rid, reservation in list(self._by_response.items()):
            if reservation.reservation_id == reservation_id and reservation.forced:
                if granted:
                    return NOTHING
                detail = {"cause": "reservation_refused", "response_id": rid}
                return tuple(self._begin_close(BUDGET_CAP, now, audit_kind="budget_cut", detail=detail))
        return NOTHING

    def on_budget_exhausted(self, now: float) -> Sequence[Action]:
        """Shared state says the tenant's budget is spent (this replica or a broadcast):
        refuse new responses, finish or cancel the current one per policy, then close."""
        self._touch_clock(now)
        return tuple(self._begin_close(BUDGET_CAP, now, audit_kind="budget_cut", detail={"cause": "budget_exhausted"}))

    def on_policy_changed(self, policy: TenantPolicy, now: float) -> Sequence[Action]:
        """The tenant's policy changed: new ceilings apply from the next event; a lower
        `max_output_tokens` re-clamps the live session at once."""
        self._touch_clock(now)
        self.policy = policy
        self._limits = BudgetLimits.from_policy(policy.budget)
        if self.closed is not None:
            return NOTHING
        ceiling = policy.max_output_tokens
        if ceiling is None or self._session_type != "realtime":
            return NOTHING
        if self._session_tokens is not None and self._session_tokens <= ceiling:
            return NOTHING
        self._session_tokens = ceiling
        update = {
            "type": "session.update",
            "event_id": self._next_id(),
            "session": {"type": "realtime", GA_TOKENS: ceiling},
        }
        return (SendToUpstream(update), self._audit("reclamp", now, {"max_output_tokens": ceiling}))

    def on_client_gone(self, now: float) -> Sequence[Action]:
        """The session is ending on the client's side (it left, it closed, a drain or a policy
        close cut it): cancel every response in flight and fence the input audio.

        The fence is an `input_audio_buffer.clear`: upstream answers it (`input_audio_buffer.cleared`,
        or an `error` naming its `event_id`) only after everything the client sent before it, so a
        response server VAD started from that audio has been announced by then, and none can start
        from it later. Responses still run upstream bill; their `response.done` is metered like any
        other; one announced after this is cancelled at once. The shell reads upstream on while
        `awaiting_upstream`."""
        self._touch_clock(now)
        if self._abandoned:
            return NOTHING
        self._abandoned = True
        actions: list[Action] = [self._cancel(response_id) for response_id in sorted(self._in_flight)]
        self._fence_id = self._next_id()
        self._clears_unanswered += 1
        actions.append(SendToUpstream({"type": "input_audio_buffer.clear", "event_id": self._fence_id}))
        return tuple(actions)

    def on_session_end(self, now: float) -> Sequence[Action]:
        """The shell records the end: nothing more from upstream will be metered. Reservations of
        responses still in flight are settled at their worst case (upstream may bill them; a
        `response.done` metered after this books its row but settles nothing again)."""
        self._touch_clock(now)
        if self._ended:
            return NOTHING
        self._ended = True
        actions: list[Action] = []
        for response_id, reservation in sorted(self._by_response.items()):
            actions.append(SettleBudget(reservation.reservation_id, reservation.amount, reservation.amount))
            self._settled_at_end.add(response_id)
        for reservation in self._awaiting_created:
            actions.append(SettleBudget(reservation.reservation_id, reservation.amount, reservation.amount))
        self._by_response.clear()
        self._awaiting_created.clear()
        return tuple(actions)

    def on_responses_unbilled(self, now: float, cause: str) -> Sequence[Action]:
        """The shell stopped waiting for the `response.done` of responses still in flight
        (`cause`: why). Upstream may bill them; the audit trail records that voxgate did not."""
        self._touch_clock(now)
        detail = {
            "response_ids": sorted(self._in_flight),
            "unacknowledged": len(self._awaiting_created),
            "transcription_item_ids": sorted(self._transcribing),
            "cause": cause,
        }
        return (self._audit("response_unbilled", now, detail),)

    def _cancel(self, response_id: str) -> SendToUpstream:
        return SendToUpstream({"type": "response.cancel", "event_id": self._next_id(), "response_id": response_id})

    def next_deadline(self) -> float | None:
        """The earliest time at which `on_tick` has something to do (None: nothing is timed).

        A shell that ticks once a second schedules its next tick no later than this, so a close
        deadline is met to the timer's precision rather than to the tick's."""
        if self.closed is not None or self.policy is None:
            return None
        times: list[float] = []
        if self._pending is not None:
            times.append(self._pending.since + RESERVATION_TIMEOUT_S)
        if self._closing is not None:
            times.append(self._closing.deadline)
        elif self.started_at is not None:
            policy = self.policy
            if policy.max_session_seconds is not None:
                times.append(self.started_at + policy.max_session_seconds)
            idle_counts = not self._in_flight and self._pending is None  # as in `on_tick`
            if policy.idle_timeout_seconds is not None and self._last_activity is not None and idle_counts:
                times.append(self._last_activity + policy.idle_timeout_seconds)
        return min(times) if times else None

    def on_tick(self, now: float) -> Sequence[Action]:
        """Time passed: reservation timeouts, closing deadlines, duration cap, idle timeout."""
        self._touch_clock(now)
        if self.closed is not None or self.policy is None:
            return NOTHING
        actions: list[Action] = []
        pending = self._pending
        if pending is not None and now - pending.since >= RESERVATION_TIMEOUT_S:
            actions.extend(self._answer_pending(pending, False, now))
        if self.closed is not None:
            return tuple(actions)
        if self._closing is not None:
            if now >= self._closing.deadline:
                actions.extend(self._close(self._closing.cap, now))
            return tuple(actions)
        policy = self.policy
        assert self.started_at is not None  # set by _touch_clock
        assert self._last_activity is not None
        if policy.max_session_seconds is not None and now >= self.started_at + policy.max_session_seconds:
            deadline = self.started_at + policy.max_session_seconds + CAP_GRACE_S
            actions.extend(self._begin_close(DURATION_CAP, now, deadline=deadline))
        elif (
            policy.idle_timeout_seconds is not None
            and not self._in_flight
            and self._pending is None
            and now - self._last_activity >= policy.idle_timeout_seconds
        ):
            actions.extend(self._close(IDLE_CAP, now))
        return tuple(actions)

    # -- client events ------------------------------------------------------------------

    def _client_event(self, event: Mapping[str, Any], now: float, *, held: bool) -> list[Action]:
        """Police one client event. `held` events were already answered with "drop", so
        whatever passes must be sent explicitly."""
        policy = self.policy
        kind = event.get("type")
        if kind == "input_audio_buffer.clear":  # passes every policy; its answer precedes the fence's
            self._clears_unanswered += 1
            event_id = event.get("event_id")
            if len(self._client_clear_ids) < MAX_TRACKED_CLEARS:
                self._client_clear_ids.append(event_id if isinstance(event_id, str) else None)
        if policy is None:
            return [SendToUpstream(event) if held else FORWARD]
        if kind == "conversation.item.create":
            self._added_tokens += item_token_estimate(event.get("item"))
        verdict = police_client_event(event, policy, session_has_ceiling=self._session_clamped)
        if isinstance(verdict, Refused):
            return [SendToClient(error_event(verdict.detail, self._next_id()))]
        outgoing: Mapping[str, Any] = verdict.event if isinstance(verdict, Rewritten) else event
        if kind == "session.update":
            self._note_session_update(outgoing)
        elif kind == "response.create":
            return self._response_create(event, outgoing, now, held=held)
        if isinstance(verdict, Rewritten):
            return [SendToUpstream(outgoing) if held else ForwardRewritten(outgoing)]
        return [SendToUpstream(event) if held else FORWARD]

    def _note_session_update(self, session_update: Mapping[str, Any]) -> None:
        session = session_update.get("session")
        if not isinstance(session, Mapping):
            return
        for name in (GA_TOKENS, BETA_TOKENS):
            if name in session:
                self._session_tokens = _token_value(session[name])
                ceiling = self.policy.max_output_tokens if self.policy is not None else None
                self._session_clamped = ceiling is not None and self._session_tokens is not None

    def _response_create(
        self, original: Mapping[str, Any], outgoing: Mapping[str, Any], now: float, *, held: bool
    ) -> list[Action]:
        client_event_id = original.get("event_id") if isinstance(original.get("event_id"), str) else None
        if self._closing is not None or self.exhausted:
            cap = self._closing.cap if self._closing is not None else BUDGET_CAP
            return [SendToClient(self._cap_error(cap, client_event_id))]
        if self._token_cap_reached():
            return [SendToClient(self._cap_error(TOKEN_CAP, client_event_id))]
        if not self._limits.limited:
            if outgoing is original:
                return [SendToUpstream(original) if held else FORWARD]
            return [SendToUpstream(outgoing) if held else ForwardRewritten(outgoing)]
        event = dict(outgoing)
        if not isinstance(event.get("event_id"), str):
            event["event_id"] = self._next_id()  # so an upstream refusal can release the reservation
        response = event.get("response")
        override = None
        if isinstance(response, Mapping):
            override = _token_value(response.get(GA_TOKENS, response.get(BETA_TOKENS)))
        reservation = _Reservation(self._new_reservation_id(), self._worst_case(override), False, event["event_id"])
        self._pending = _Pending(reservation, event, client_event_id, now)
        return [ReserveBudget(reservation.reservation_id, reservation.amount)]

    def _answer_pending(self, pending: _Pending, granted: bool, now: float) -> list[Action]:
        self._pending = None
        reservation = pending.reservation
        actions: list[Action] = []
        if self.closed is not None or self._abandoned or self._ended:
            if granted:  # nothing was sent: give the reservation back
                actions.append(SettleBudget(reservation.reservation_id, reservation.amount, 0))
            return actions
        if not granted:
            detail = ErrorDetail(
                message="This tenant's remaining budget does not cover this response.",
                type="insufficient_quota",
                code="budget_exhausted",
                event_id=pending.client_event_id,
            )
            actions.append(SendToClient(error_event(detail, self._next_id())))
        elif self._closing is not None or self.exhausted:
            actions.append(SettleBudget(reservation.reservation_id, reservation.amount, 0))
            cap = self._closing.cap if self._closing is not None else BUDGET_CAP
            actions.append(SendToClient(self._cap_error(cap, pending.client_event_id)))
        else:
            self._awaiting_created.append(reservation)
            actions.append(SendToUpstream(pending.event))
        # Release what queued behind it, in order, until another reservation is needed.
        held = pending.held
        while held and self._pending is None and self.closed is None:
            actions.extend(self._client_event(held.pop(0), now, held=True))
        if self._pending is not None:
            self._pending.held.extend(held)
        if self._closing is not None and not self._in_flight and self._pending is None and self.closed is None:
            actions.extend(self._close(self._closing.cap, now))
        return actions

    # -- enforcement helpers ------------------------------------------------------------

    def _begin_close(
        self,
        cap: _Cap,
        now: float,
        *,
        deadline: float | None = None,
        audit_kind: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> list[Action]:
        """Start closing for `cap` (the first cause wins): refuse new responses from now on,
        let the in-flight one finish (or cancel it), close once nothing is in flight or at
        the deadline."""
        if self.closed is not None:
            return []
        actions: list[Action] = []
        if cap is BUDGET_CAP:
            if self.exhausted:
                return []
            self.exhausted = True
        if audit_kind is not None:
            actions.append(self._audit(audit_kind, now, detail or {}))
        if self._closing is not None:
            return actions
        cancel = cap is BUDGET_CAP and self.policy is not None and self.policy.budget.at_limit == "cancel_response"
        if deadline is None:
            deadline = now + (CANCEL_CLOSE_S if cancel else CAP_GRACE_S)
        self._closing = _Closing(cap, deadline)
        if cancel:
            for response_id in sorted(self._in_flight):
                actions.append(
                    SendToUpstream({"type": "response.cancel", "event_id": self._next_id(), "response_id": response_id})
                )
        if not self._in_flight and self._pending is None:
            actions.extend(self._close(cap, now))
        return actions

    def _close(self, cap: _Cap, now: float) -> list[Action]:
        if self.closed is not None:
            return []
        self.closed = CloseSession(cap.code, cap.reason, cap.end_reason)
        actions: list[Action] = [SendToClient(self._cap_error(cap, None))]
        # Reservations still open stay open: the shell cancels their responses and reads upstream
        # for their `response.done`, which settles them at the real cost (`on_session_end`
        # settles at the worst case whatever never came).
        if cap is not IDLE_CAP:
            actions.append(self._audit(f"close_{cap.end_reason}", now, {"code": cap.code}))
        actions.append(self.closed)
        return actions

    def _cap_error(self, cap: _Cap, client_event_id: str | None) -> dict[str, Any]:
        detail = ErrorDetail(message=cap.message, type=cap.error_type, code=cap.error_code, event_id=client_event_id)
        return error_event(detail, self._next_id())

    def _token_cap_reached(self) -> bool:
        cap = self.policy.max_session_tokens if self.policy is not None else None
        return cap is not None and self.totals.input_tokens + self.totals.output_tokens >= cap

    def _worst_case(self, response_override: int | None) -> int:
        policy_ceiling = self.policy.max_output_tokens if self.policy is not None else None
        output = effective_output_ceiling(response_override, self._session_tokens, policy_ceiling, self.model)
        price, _ = self.prices.price_for(self.model)
        return worst_case_cost_micro_usd(output, self._context_tokens + self._added_tokens, price)

    def _new_reservation_id(self) -> str:
        self._reservation_seq += 1
        return f"{self.identity.session_id}:r{self._reservation_seq}"

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

    # -- server events ------------------------------------------------------------------

    def _response_done(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        response = event.get("response")
        if not isinstance(response, Mapping) or not isinstance(response.get("id"), str):
            return FORWARD_ONLY  # not ours to judge (and an unhashable id must not raise)
        if response["id"] in self._seen_responses:
            return FORWARD_ONLY
        priced = usage_record(
            response,
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            model=self.model,
            prices=self.prices,
            now=now,
        )
        if priced is None:
            return FORWARD_ONLY
        record, usage = priced
        self._seen_responses.add(record.response_id)
        totals = self.totals
        totals.responses += 1
        totals.input_tokens += usage.input_tokens
        totals.output_tokens += usage.output_tokens
        totals.cost_micro_usd += record.cost_micro_usd
        self._context_tokens, self._added_tokens = usage.input_tokens + usage.output_tokens, 0
        return (Forward(), Persist(record), *self._after_response(record.response_id, record.cost_micro_usd, now))

    def _after_response(self, response_id: str, cost: int, now: float) -> list[Action]:
        self._in_flight.discard(response_id)
        if self.policy is None:
            return []
        self._last_activity = max(now, self._last_activity or now)  # idle counts from the response's end
        actions: list[Action] = []
        if response_id not in self._settled_at_end:
            reservation = self._by_response.pop(response_id, None)
            if reservation is None and self._awaiting_created:
                reservation = self._awaiting_created.popleft()  # its response.created was never seen
            reserved = reservation.amount if reservation is not None else 0
            actions.append(SettleBudget(reservation.reservation_id if reservation else None, reserved, cost))
        if self.closed is not None:
            return actions
        if self._closing is None and self._token_cap_reached():
            actions.extend(self._begin_close(TOKEN_CAP, now))
        elif self._closing is not None and not self._in_flight and self._pending is None:
            actions.extend(self._close(self._closing.cap, now))
        return actions

    def _response_created(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        response = event.get("response")
        response_id = response.get("id") if isinstance(response, Mapping) else None
        if not isinstance(response, Mapping) or not isinstance(response_id, str) or not response_id:
            return FORWARD_ONLY
        if response_id in self._in_flight or response_id in self._seen_responses:
            return FORWARD_ONLY
        self._in_flight.add(response_id)
        if self.policy is None:
            return (FORWARD, self._cancel(response_id)) if self._abandoned else FORWARD_ONLY
        actions: list[Action] = [FORWARD]
        server_started = not self._awaiting_created
        if not server_started:
            self._by_response[response_id] = self._awaiting_created.popleft()
        elif self._limits.limited and not self._ended:
            # Server VAD started it without asking: reserve after the fact (always recorded).
            override = _token_value(response.get(GA_TOKENS, response.get(BETA_TOKENS)))
            reservation = _Reservation(self._new_reservation_id(), self._worst_case(override), forced=True)
            self._by_response[response_id] = reservation
            actions.append(ReserveBudget(reservation.reservation_id, reservation.amount, forced=True))
        closing = self._closing
        cancels = self.policy.budget.at_limit == "cancel_response"
        cancel_all = closing is not None and closing.cap is BUDGET_CAP and cancels
        # Once closed (or the client is gone) no response is wanted: it still bills, so it is
        # tracked until its `response.done`, like any other.
        if self._abandoned or self.closed is not None or (closing is not None and (server_started or cancel_all)):
            actions.append(self._cancel(response_id))
        return tuple(actions)

    def _upstream_error(self, error: Mapping[str, Any]) -> Sequence[Action]:
        """Upstream refused a client event; if it was a reserved response.create, release it."""
        event_id = error.get("event_id")
        if self.policy is None or not isinstance(event_id, str):
            return FORWARD_ONLY
        for reservation in self._awaiting_created:
            if reservation.event_id == event_id:
                self._awaiting_created.remove(reservation)
                return (FORWARD, SettleBudget(reservation.reservation_id, reservation.amount, 0))
        return FORWARD_ONLY

    def _rate_limits(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        record = rate_limits_record(
            event, session_id=self.identity.session_id, tenant_id=self.identity.tenant_id, now=now
        )
        return FORWARD_ONLY if record is None else (Forward(), Persist(record))

    def _session_config(self, event: Mapping[str, Any]) -> Sequence[Action]:
        session = event.get("session")
        if not isinstance(session, Mapping):
            return FORWARD_ONLY
        view = read_session_config(session)
        self.model = view.model or self.model
        self.upstream_session_id = view.upstream_session_id or self.upstream_session_id
        self.voice = view.voice or self.voice
        if view.transcription_model is not None or view.transcription_cleared:
            self.transcription_model = view.transcription_model
        info = SessionInfoRecord(
            session_id=self.identity.session_id,
            model=self.model,
            voice=self.voice,
            upstream_session_id=self.upstream_session_id,
        )
        return (Forward(), Persist(info), *self._ensure_session_ceiling(session))

    def _ensure_session_ceiling(self, session: Mapping[str, Any]) -> list[Action]:
        """Make the upstream session carry the policy's ceiling, so responses started by
        server VAD (which read the session's value) are bounded too."""
        kind = session.get("type")
        if isinstance(kind, str):
            self._session_type = kind
        beta = "type" not in session
        for name in (GA_TOKENS, BETA_TOKENS):
            if name in session:
                self._session_tokens = _token_value(session[name])
        ceiling = self.policy.max_output_tokens if self.policy is not None else None
        if ceiling is None or self._session_type != "realtime" or self.closed is not None:
            return []
        self._session_clamped = True
        if self._session_tokens is not None and self._session_tokens <= ceiling:
            return []
        self._session_tokens = ceiling
        body: dict[str, Any] = {BETA_TOKENS: ceiling} if beta else {"type": "realtime", GA_TOKENS: ceiling}
        return [SendToUpstream({"type": "session.update", "event_id": self._next_id(), "session": body})]

    def _transcription(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        record = transcription_record(
            event,
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            model=self.transcription_model,
            prices=self.prices,
            now=now,
        )
        if record is None or (record.item_id, record.content_index) in self._seen_transcriptions:
            return FORWARD_ONLY
        self._seen_transcriptions.add((record.item_id, record.content_index))
        self.totals.transcription_cost_micro_usd += record.cost_micro_usd
        return (Forward(), Persist(record))

    # -- helpers ------------------------------------------------------------------------

    def _reject(self, message: str, code: str, event: Mapping[str, Any]) -> Sequence[Action]:
        client_event_id = event.get("event_id")
        detail = ErrorDetail(
            message=message,
            code=code,
            event_id=client_event_id if isinstance(client_event_id, str) else None,
        )
        return (SendToClient(error_event(detail, self._next_id())),)

    def _next_id(self) -> str:
        self._event_seq += 1
        return f"event_vg{self.identity.session_id[-12:]}{self._event_seq:06d}"


def _token_value(value: object) -> int | None:
    """A max_output_tokens value as an int, or None for "inf", unset or garbage."""
    number = as_int(value)
    return number if number is not None and number >= 1 else None
