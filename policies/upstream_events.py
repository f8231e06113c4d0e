"""The governor's server side: what each upstream event means for metering and policy.

Every event that carries money (`response.done`, an input transcription), configuration
(`session.created`/`session.updated`), a response's life (`response.created`) or an answer
(`input_audio_buffer.cleared`, `error`) is decoded here into actions; the rest is forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policies.actions import (
    FORWARD,
    FORWARD_ONLY,
    Action,
    Forward,
    NoteHeadroom,
    Persist,
    RecordSpend,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    TranscriptionRecord,
)
from policies.caps import BUDGET_CAP, TOKEN_CAP
from policies.clamp import BETA_TOKENS, GA_TOKENS
from policies.governor_state import GovernorState
from policies.opening import Opening
from policies.session_ceiling import token_value


class UpstreamEvents(GovernorState):
    """`on_server_event` and what it dispatches to."""

    def on_server_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded server event. Returns what to do with it."""
        self._touch_clock(now)
        if self._opening is not None:
            opened = self._opening_event(self._opening, event, now)
            if opened is not None:
                return opened
        kind = event.get("type")
        if kind == "response.done":
            return self._response_done(event, now)
        if kind == "response.created":
            return self._response_created(event)
        if kind == "rate_limits.updated":
            record = self.meter.rate_limits(event, now)
            return FORWARD_ONLY if record is None else (Forward(), Persist(record), NoteHeadroom(record))
        if kind == "session.updated":
            if self._own_update_id is not None:  # the answer to voxgate's own update: not the client's
                self._own_update_id = None
                return tuple(a for a in self._session_config(event) if not isinstance(a, Forward))
            self._client_updates = max(0, self._client_updates - 1)
            return self._session_config(event)
        if kind == "session.created":
            return self._session_config(event)
        if kind == "conversation.item.input_audio_transcription.completed":
            return self._transcription(event, now)
        if kind == "input_audio_buffer.committed":
            self.meter.committed(event.get("item_id"))
            return FORWARD_ONLY
        if kind == "conversation.item.input_audio_transcription.failed":
            self.meter.transcription_failed(event.get("item_id"))
            return FORWARD_ONLY
        if kind == "input_audio_buffer.cleared":
            self.fence.cleared()
            return FORWARD_ONLY
        if kind == "error":
            error = event.get("error")
            if isinstance(error, Mapping):
                if error.get("code") == "session_expired":
                    self.expired = True
                if self._own_update_id is not None and error.get("event_id") == self._own_update_id:
                    # Upstream refused voxgate's own update: the client never sent it, so it does not
                    # see the refusal; each response.create gets the ceiling instead.
                    self._own_update_id = None
                    self.ceiling.clamped = False
                    return (self._audit("clamp_refused", now, {"error_code": error.get("code")}),)
                self.fence.refused(error.get("event_id"))
                return self._upstream_error(error)
        return FORWARD_ONLY

    def _opening_event(self, opening: Opening, event: Mapping[str, Any], now: float) -> Sequence[Action] | None:
        """The events that end the opening; None for any other (handled as usual, held by the shell)."""
        kind = event.get("type")
        if kind == "session.created" and opening.created is None:
            actions = self._session_config(event)
            updates = [a for a in actions if isinstance(a, SendToUpstream)]
            if not updates:  # upstream already carries the ceiling: nothing to confirm
                self._opening = None
                return actions
            opening.hold(event, updates[0].event["event_id"])
            return tuple(a for a in actions if not isinstance(a, Forward))
        if opening.created is None:
            return None
        if kind == "session.updated":  # client messages wait: the first one answers voxgate's update
            self._opening = None
            actions = self._session_config(event)
            return (SendToClient(opening.released(event)), *(a for a in actions if not isinstance(a, Forward)))
        error = event.get("error")
        if kind == "error" and isinstance(error, Mapping) and error.get("event_id") == opening.update_id:
            self._opening = None
            self.ceiling.clamped = False  # upstream refused the ceiling: each response.create gets one
            return (SendToClient(opening.created), self._audit("clamp_refused", now, {"error_code": error.get("code")}))
        return None

    def _response_done(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        response = event.get("response")
        if not isinstance(response, Mapping):
            return FORWARD_ONLY
        record = self.meter.response_done(response, now)
        if record is None:
            return FORWARD_ONLY
        response_id = record.response_id
        self._in_flight.discard(response_id)
        if self.policy is None:
            return (Forward(), Persist(record))
        self._last_activity = max(now, self._last_activity or now)  # idle counts from the response's end
        actions: list[Action] = [Forward(), Persist(record)]
        settle = self.book.settle_done(response_id, record.cost_micro_usd)
        if settle is not None:
            actions.append(settle)
        if self.caps.closed is not None:
            return tuple(actions)
        if self.caps.closing is None and self._token_cap_reached():
            actions.extend(
                self.caps.begin(TOKEN_CAP, now, policy=self.policy, in_flight=self._in_flight, busy=self._busy)
            )
        elif not self._busy:
            actions.extend(self.caps.idle_now(now))
        return tuple(actions)

    def _response_created(self, event: Mapping[str, Any]) -> Sequence[Action]:
        response = event.get("response")
        response_id = response.get("id") if isinstance(response, Mapping) else None
        if not isinstance(response, Mapping) or not isinstance(response_id, str) or not response_id:
            return FORWARD_ONLY
        if response_id in self._in_flight or self.meter.knows_response(response_id):
            return FORWARD_ONLY
        self._in_flight.add(response_id)
        if self.policy is None:
            return (FORWARD, self._cancel(response_id)) if self._abandoned else FORWARD_ONLY
        actions: list[Action] = [FORWARD]
        server_started = not self.book.created(response_id)
        if server_started and self._limits.limited and not self._ended:
            # Server VAD started it without asking: reserve after the fact (always recorded).
            override = token_value(response.get(GA_TOKENS, response.get(BETA_TOKENS)))
            reservation = self.book.new(self._worst_case(override), forced=True)
            self.book.by_response[response_id] = reservation
            actions.append(ReserveBudget(reservation.reservation_id, reservation.amount, forced=True))
        closing = self.caps.closing
        cancels = self.policy.budget.at_limit == "cancel_response"
        cancel_all = closing is not None and closing.cap is BUDGET_CAP and cancels
        # Once closed (or the client is gone) no response is wanted: it still bills, so it is
        # tracked until its `response.done`, like any other.
        if self._abandoned or self.caps.closed is not None or (closing is not None and (server_started or cancel_all)):
            actions.append(self._cancel(response_id))
        return tuple(actions)

    def _upstream_error(self, error: Mapping[str, Any]) -> Sequence[Action]:
        """Upstream refused a client event; if it was a reserved response.create, release it."""
        event_id = error.get("event_id")
        if self.policy is None or not isinstance(event_id, str):
            return FORWARD_ONLY
        settle = self.book.release_refused(event_id)
        return FORWARD_ONLY if settle is None else (FORWARD, settle)

    def _session_config(self, event: Mapping[str, Any]) -> Sequence[Action]:
        """Upstream's session: metered (model, voice), and made to carry the policy's ceiling."""
        session = event.get("session")
        if not isinstance(session, Mapping):
            return FORWARD_ONLY
        info = self.meter.session_info(session)
        ceiling = self.policy.max_output_tokens if self.policy is not None and self.caps.closed is None else None
        body = self.ceiling.observe(session, ceiling)
        if body is None:
            return (Forward(), Persist(info))
        update = {"type": "session.update", "event_id": self._next_id(), "session": body}
        return (Forward(), Persist(info), self._own_update(update))

    def _transcription(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        record = self.meter.transcription(event, now)
        if record is None:
            return FORWARD_ONLY
        return (Forward(), *self._book_transcription(record))

    def _book_transcription(self, record: TranscriptionRecord) -> Sequence[Action]:
        """Persist a transcription's cost and, under a policy, add it to the tenant's spend."""
        if self.policy is None:
            return (Persist(record),)
        spend_id = f"tr:{record.session_id}:{record.item_id}:{record.content_index}"
        return (Persist(record), RecordSpend(spend_id, record.cost_micro_usd))
