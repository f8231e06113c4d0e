"""The per-session governor: events and time in, actions out.

One `SessionGovernor` lives as long as one Realtime session, whatever transport carries
it (proxied WebSocket, WebRTC sideband). The shell feeds it every client and server
event it decodes, plus ticks, always with an explicit `now` (Unix seconds), and executes
the actions it returns in order. It never raises on bad input: a message it cannot
understand becomes an `error` event for the client. See docs/governor.md.

This module holds the client's entry points, the shell's answers, time and the end; the
server events are `policies.upstream_events`'s and the state, in parts, is
`policies.governor_state`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from policies.actions import (
    FORWARD,
    NOTHING,
    Action,
    ErrorDetail,
    ForwardRewritten,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
    error_event,
)
from policies.budget import B64_CHARS_PER_AUDIO_TOKEN, BudgetLimits
from policies.caps import OPENING_CAP, TOKEN_CAP
from policies.clamp import BETA_TOKENS, GA_TOKENS, Refused, Rewritten, police_client_event
from policies.policy import TenantPolicy
from policies.reservations import Pending
from policies.session_ceiling import token_value
from policies.session_meter import SessionIdentity, SessionTotals
from policies.transcription_backstop import appended_audio
from policies.upstream_events import UpstreamEvents

__all__ = ["RESERVATION_TIMEOUT_S", "SessionGovernor", "SessionIdentity", "SessionTotals"]

RESERVATION_TIMEOUT_S: Final = 5.0  # an unanswered reservation counts as refused


class SessionGovernor(UpstreamEvents):
    """Meters and polices one Realtime session through a handful of entry points."""

    # -- client entry points ------------------------------------------------------------

    def on_client_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded client event. Returns what to do with it."""
        self._touch(now)
        if not isinstance(event.get("type"), str):
            return self._reject("The event must be an object with a string 'type'.", "invalid_event", event)
        if self.caps.closed is not None:
            return NOTHING
        pending = self.book.pending
        if pending is not None and event["type"] != "input_audio_buffer.append":
            # Keep order: nothing overtakes a response.create waiting for its reservation (audio
            # appends aside: they only fill the input buffer, as the undecoded ones do).
            pending.held.append(event)
            return NOTHING
        return tuple(self._client_event(event, now, held=False))

    def on_client_garbage(self, reason: str, now: float) -> Sequence[Action]:
        """A client message that is not a JSON object: refuse it, forward nothing."""
        self._touch(now)
        return (SendToClient(error_event(ErrorDetail(message=reason, code="invalid_json"), self._next_id())),)

    def note_client_activity(self, now: float, audio_b64_chars: int = 0) -> None:
        """A client message the shell did not decode (an audio append): it is activity,
        and `audio_b64_chars` of base64 audio will join the context."""
        # `_touch` and `note_audio`, inlined: this runs for every audio frame.
        if self.started_at is None:
            self.started_at = now
        last = self._last_activity
        if last is None or now > last:
            self._last_activity = now
        if audio_b64_chars > 0:
            self.meter.added_tokens += -(-audio_b64_chars // B64_CHARS_PER_AUDIO_TOKEN)

    def note_client_audio(self, now: float, message: bytes) -> None:
        """An audio append the shell did not decode (its whole UTF-8 message). A transcription
        session also meters the audio itself (`policies.transcription_backstop`), so it reads
        the exact size of the base64; any other session counts the message's length."""
        meter = self.meter
        backstop = meter.backstop
        if backstop is None:
            chars = len(message)
        else:
            chars, audio_bytes = appended_audio(message)
            backstop.appended(audio_bytes)
        # `note_client_activity`, inlined: one Python call less on every audio frame.
        if self.started_at is None:
            self.started_at = now
        last = self._last_activity
        if last is None or now > last:
            self._last_activity = now
        if chars > 0:
            meter.added_tokens += -(-chars // B64_CHARS_PER_AUDIO_TOKEN)

    def _client_event(self, event: Mapping[str, Any], now: float, *, held: bool) -> list[Action]:
        """Police one client event. `held` events were already answered with "drop", so
        whatever passes must be sent explicitly."""
        policy = self.policy
        kind = event.get("type")
        if kind == "input_audio_buffer.clear":  # passes every policy; its answer precedes the fence's
            self.fence.client_clear(event.get("event_id"))
        backstop = self.meter.backstop
        if backstop is not None and kind == "input_audio_buffer.commit":
            backstop.client_commit()
        elif backstop is not None and kind == "input_audio_buffer.clear":
            backstop.client_clear()
        if policy is None:
            return [SendToUpstream(event) if held else FORWARD]
        if kind == "conversation.item.create":
            self.meter.note_item(event.get("item"))
        verdict = police_client_event(event, policy, session_has_ceiling=self.ceiling.clamped)
        if isinstance(verdict, Refused):
            return [SendToClient(error_event(verdict.detail, self._next_id()))]
        outgoing: Mapping[str, Any] = verdict.event if isinstance(verdict, Rewritten) else event
        if kind == "session.update":
            self.ceiling.client_update(outgoing, policy.max_output_tokens)
            self._client_updates += 1
        elif kind == "response.create":
            return self._response_create(event, outgoing, now, held=held)
        if isinstance(verdict, Rewritten):
            return [SendToUpstream(outgoing) if held else ForwardRewritten(outgoing)]
        return [SendToUpstream(event) if held else FORWARD]

    def _response_create(
        self, original: Mapping[str, Any], outgoing: Mapping[str, Any], now: float, *, held: bool
    ) -> list[Action]:
        client_event_id = original.get("event_id") if isinstance(original.get("event_id"), str) else None
        cap = self.caps.refusing() or (TOKEN_CAP if self._token_cap_reached() else None)
        if cap is not None:
            return [SendToClient(self.caps.error(cap, client_event_id))]
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
            override = token_value(response.get(GA_TOKENS, response.get(BETA_TOKENS)))
        reservation = self.book.new(self._worst_case(override), event_id=event["event_id"])
        self.book.pending = Pending(reservation, event, client_event_id, now)
        return [ReserveBudget(reservation.reservation_id, reservation.amount)]

    # -- the shell's answers and the shared state's news --------------------------------

    def on_reservation(self, reservation_id: str, granted: bool, now: float) -> Sequence[Action]:
        """The shell's answer to a `ReserveBudget`. Unknown ids are ignored."""
        pending = self.book.pending
        if pending is not None and pending.reservation.reservation_id == reservation_id:
            actions = self._answer_pending(pending, granted, now)
            if not granted:  # shared state refused: the budget cannot cover a response, so cut the session
                actions.extend(self._budget_cut(now, {"cause": "reservation_refused"}))
            return tuple(actions)
        response_id = self.book.forced_response(reservation_id)
        if response_id is None or granted:
            return NOTHING
        return tuple(self._budget_cut(now, {"cause": "reservation_refused", "response_id": response_id}))

    def _answer_pending(self, pending: Pending, granted: bool, now: float) -> list[Action]:
        self.book.pending = None
        reservation = pending.reservation
        actions: list[Action] = []
        if self.caps.closed is not None or self._abandoned or self._ended:
            if granted:  # nothing was sent: give the reservation back
                actions.append(SettleBudget(reservation.reservation_id, reservation.amount, 0))
            return actions
        refusing = self.caps.refusing()
        if not granted:
            detail = ErrorDetail(
                message="This tenant's remaining budget does not cover this response.",
                type="insufficient_quota",
                code="budget_exhausted",
                event_id=pending.client_event_id,
            )
            actions.append(SendToClient(error_event(detail, self._next_id())))
        elif refusing is not None:
            actions.append(SettleBudget(reservation.reservation_id, reservation.amount, 0))
            actions.append(SendToClient(self.caps.error(refusing, pending.client_event_id)))
        else:
            self.book.awaiting_created.append(reservation)
            actions.append(SendToUpstream(pending.event))
        # Release what queued behind it, in order, until another reservation is needed.
        held = pending.held
        while held and self.book.pending is None and self.caps.closed is None:
            actions.extend(self._client_event(held.pop(0), now, held=True))
        if self.book.pending is not None:
            self.book.pending.held.extend(held)
        if not self._busy:
            actions.extend(self.caps.idle_now(now))
        return actions

    def on_budget_exhausted(self, now: float) -> Sequence[Action]:
        """Shared state says the tenant's budget is spent (this replica or a broadcast):
        refuse new responses, finish or cancel the current one per policy, then close."""
        self._touch_clock(now)
        return tuple(self._budget_cut(now, {"cause": "budget_exhausted"}))

    def on_policy_changed(self, policy: TenantPolicy, now: float) -> Sequence[Action]:
        """The tenant's policy changed: new ceilings apply from the next event; a lower
        `max_output_tokens` re-clamps the live session at once."""
        self._touch_clock(now)
        self.policy = policy
        self._limits = BudgetLimits.from_policy(policy.budget)
        ceiling = policy.max_output_tokens
        if self.caps.closed is not None or ceiling is None or not self.ceiling.lowered(ceiling):
            return NOTHING
        update = {
            "type": "session.update",
            "event_id": self._next_id(),
            "session": {"type": "realtime", GA_TOKENS: ceiling},
        }
        return (self._own_update(update), self._audit("reclamp", now, {"max_output_tokens": ceiling}))

    # -- the end ------------------------------------------------------------------------

    def on_client_gone(self, now: float) -> Sequence[Action]:
        """The session is ending on the client's side (it left, it closed, a drain or a policy
        close cut it): cancel every response in flight and fence the input audio
        (`policies.fence`). Responses still running upstream bill; their `response.done` is
        metered like any other; one announced after this is cancelled at once. The shell reads
        upstream on while `awaiting_upstream`."""
        self._touch_clock(now)
        if self._abandoned:
            return NOTHING
        self._abandoned = True
        actions: list[Action] = [self._cancel(response_id) for response_id in sorted(self._in_flight)]
        fence_id = self._next_id()
        self.fence.raise_fence(fence_id)
        actions.append(SendToUpstream({"type": "input_audio_buffer.clear", "event_id": fence_id}))
        return tuple(actions)

    def on_session_end(self, now: float) -> Sequence[Action]:
        """The shell records the end: nothing more from upstream will be metered. Reservations of
        responses still in flight are settled at their worst case (upstream may bill them; a
        `response.done` metered after this books its row but settles nothing again)."""
        self._touch_clock(now)
        if self._ended:
            return NOTHING
        self._ended = True
        actions: list[Action] = list(self.book.settle_at_end())
        backstop = self.meter.backstop_record(now)  # audio no completed transcription billed
        if backstop is not None:
            actions.extend(self._book_transcription(backstop))
        return tuple(actions)

    def on_responses_unbilled(self, now: float, cause: str) -> Sequence[Action]:
        """The shell stopped waiting for the `response.done` of responses still in flight
        (`cause`: why). Upstream may bill them; the audit trail records that voxgate did not."""
        self._touch_clock(now)
        detail = {
            "response_ids": sorted(self._in_flight),
            "unacknowledged": len(self.book.awaiting_created),
            "transcription_item_ids": sorted(self.meter.transcribing),
            "cause": cause,
        }
        return (self._audit("response_unbilled", now, detail),)

    # -- time ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time at which `on_tick` has something to do (None: nothing is timed).

        A shell that ticks once a second schedules its next tick no later than this, so a close
        deadline is met to the timer's precision rather than to the tick's."""
        if self.caps.closed is not None or self.policy is None:
            return None
        times: list[float] = []
        if self._opening is not None and self._opening.deadline is not None:
            times.append(self._opening.deadline)
        pending = self.book.pending
        if pending is not None:
            times.append(pending.since + RESERVATION_TIMEOUT_S)
        times.extend(self.caps.deadlines(self.policy, self.started_at, self._last_activity, not self._busy))
        return min(times) if times else None

    def on_tick(self, now: float) -> Sequence[Action]:
        """Time passed: the opening's and reservations' timeouts, closing deadlines, duration cap, idle timeout."""
        self._touch_clock(now)
        if self.caps.closed is not None or self.policy is None:
            return NOTHING
        opening = self._opening
        if opening is not None and opening.expired(now):
            self._opening = None
            return tuple(self.caps.close(OPENING_CAP, now))
        actions: list[Action] = []
        pending = self.book.pending
        if pending is not None and now - pending.since >= RESERVATION_TIMEOUT_S:
            actions.extend(self._answer_pending(pending, False, now))
        if self.caps.closed is not None:
            return tuple(actions)
        assert self.started_at is not None  # set by _touch_clock
        assert self._last_activity is not None
        actions.extend(
            self.caps.tick(
                now, self.policy, self.started_at, self._last_activity, in_flight=self._in_flight, busy=self._busy
            )
        )
        return tuple(actions)
