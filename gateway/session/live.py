"""One live Realtime session as any transport shell sees it.

`LiveSession` sits between a transport (the frame-splicing relay, the WebRTC sideband
monitor) and the pure `SessionGovernor`. It decides which messages need decoding, feeds
the governor, and hands every action the governor returns to the session's
`SessionEffects`, which performs them and tells the transport what to send where. It owns
no socket and never awaits, so every transport drives it the same way:

    verdict = live.from_client(message)     # or .from_upstream(message) / .tick()
    if verdict.forward: send the original message on
    send verdict.to_client / verdict.to_upstream; if verdict.close: close both sides

A verdict whose `durable` future is set carries a billed record (a `response.done`'s usage):
a shell that can hold the message waits for that future before it sends anything toward the
client (docs/relay.md); one that cannot (the sideband, which forwards nothing) ignores it.
While `opening` is true the governor is confirming its own configuration with upstream: a
shell that carries the client's socket holds the client's messages and what goes to the
client until it is false (docs/governor.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger.writer import SessionEnded, SessionStarted
from gateway.session.close_reasons import ledger_end_reason
from gateway.session.effects import SessionEffects
from gateway.session.model_gate import ModelGate
from gateway.session.verdict import HOLD, PASS, Deliver, Verdict
from gateway.telemetry import SessionFields, session_fields
from policies.actions import Action
from policies.frames import (
    CLIENT_EXACT_PREFIXES,
    PASSTHROUGH_CLIENT_TYPES,
    PASSTHROUGH_SERVER_TYPES,
    SERVER_EXACT_PREFIXES,
    exact_passthrough,
    passthrough_type,
)
from policies.governor import SessionGovernor
from policies.policy import TenantPolicy

Message = str | bytes
__all__ = ["HOLD", "PASS", "LiveSession", "Verdict"]

log = logging.getLogger("voxgate.session")

# The first audio of a response, as OpenAI and the SDKs spell it (time to first audio).
AUDIO_DELTA: Final = "response.output_audio.delta"
AUDIO_DELTA_PREFIXES: Final = tuple(f'{{"type":{gap}"{AUDIO_DELTA}"'.encode() for gap in ("", " "))


class LiveSession:
    """Meters and polices one session for whichever transport carries it."""

    def __init__(
        self,
        governor: SessionGovernor,
        effects: SessionEffects,
        started: SessionStarted,
        *,
        clock: Clock = SYSTEM_CLOCK,
        leased: bool = False,
        model_gate: ModelGate | None = None,
    ) -> None:
        self.governor = governor
        self.model_gate = model_gate  # a transcription session: its model counted once named
        self.effects = effects
        self.started = started
        self.clock = clock
        self.leased = leased
        self.ended: SessionEnded | None = None
        self.client_messages = 0
        self.upstream_messages = 0
        self._deliver: Deliver | None = None
        self._note_audio = governor.note_client_audio  # bound once: it runs for every audio frame
        self._now = clock.time
        # When the response now awaited was requested (0: none awaits its first audio delta).
        self._first_audio_since = 0.0
        metrics = effects.metrics
        self._first_audio = None if metrics is None else metrics.time_to_first_audio.labels(started.model or "")
        self.log_fields: SessionFields = session_fields(started.session_id, started.tenant_id, effects.trace)
        effects.ledger.submit(started)

    def attach(self, deliver: Deliver) -> None:
        """The transport's way to receive verdicts produced off its frame path (reservations, broadcasts)."""
        self._deliver = deliver
        self.effects.start(self)

    async def _send_later(self, actions: Sequence[Action]) -> None:
        verdict = self._apply(actions)
        if self._deliver is not None and verdict is not HOLD:
            await self._deliver(verdict)

    def _apply(self, actions: Sequence[Action]) -> Verdict:
        return self.effects.execute(actions)

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
        await self._send_later(self.governor.on_reservation(reservation_id, granted, self._now()))

    async def budget_exhausted(self, now: float) -> None:
        await self._send_later(self.governor.on_budget_exhausted(now))

    async def policy_changed(self, policy: TenantPolicy, now: float) -> None:
        self.effects.policy = policy
        await self._send_later(self.governor.on_policy_changed(policy, now))

    @property
    def opening(self) -> bool:
        """The governor's own configuration is not confirmed by upstream yet: hold the client's side."""
        return self.governor.opening

    @property
    def session_id(self) -> str:
        return self.started.session_id

    @property
    def holding_client(self) -> bool:
        """A client `session.update` waits for its transcription model to be counted: what the client
        sends meanwhile is held behind it (the relay stops reading the client)."""
        return self.model_gate is not None and self.model_gate.pending

    def from_client(self, message: Message, binary: bool = False) -> Verdict:
        """A whole client message. Text may come as `str` or as its UTF-8 bytes."""
        self.client_messages += 1
        gate = self.model_gate
        if gate is not None and gate.pending:  # behind an update whose model is being counted
            gate.queued.append((message, binary))
            return HOLD
        now = self._now()
        if binary:
            return self._apply(self.governor.on_client_garbage("Binary frames are not supported; send JSON text.", now))
        if isinstance(message, str):
            message = message.encode()
        if passthrough_type(message, PASSTHROUGH_CLIENT_TYPES) is not None:
            self._note_audio(now, message)
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return self._apply(self.governor.on_client_garbage(f"Invalid JSON: {exc.msg}.", now))
        if not isinstance(event, dict):
            return self._apply(self.governor.on_client_garbage("An event must be a JSON object.", now))
        if not self._first_audio_since and event.get("type") == "response.create":
            self._first_audio_since = now
        verdict = self._apply(self.governor.on_client_event(event, now))
        model = gate.wants(event, verdict) if gate is not None and self.leased else None
        if gate is None or model is None:
            return verdict
        gate.hold(model, verdict, message, event, self.effects.policy, now, self.from_client, self._deliver)
        return HOLD

    def client_audio(self, message: bytes) -> bool:
        """The splicing relay's fast path for one whole client text message (UTF-8 bytes).

        True: it is an audio append, noted as activity, to be forwarded as it is. False:
        nothing happened; the relay must call `from_client`.
        """
        if self.model_gate is not None and self.model_gate.pending:
            return False  # held in order behind the update (`from_client`)
        if exact_passthrough(message, 0, len(message), CLIENT_EXACT_PREFIXES):
            self.client_messages += 1
            self._note_audio(self._now(), message)
            return True
        return False

    def upstream_content(self, frame: bytes, start: int, end: int) -> bool:
        """The splicing relay's fast path for the upstream text message `frame[start:end]`.

        True: it is a content delta, to be forwarded as it is. False: nothing happened;
        the relay must call `from_upstream`.
        """
        if exact_passthrough(frame, start, end, SERVER_EXACT_PREFIXES):
            self.upstream_messages += 1
            if self._first_audio_since and frame.startswith(AUDIO_DELTA_PREFIXES, start, end):
                self._first_audio_heard()
            return True
        return False

    def _first_audio_heard(self) -> None:
        """The awaited response's first audio delta: observe the time since its request, once."""
        since, self._first_audio_since = self._first_audio_since, 0.0
        if self._first_audio is not None:
            self._first_audio.observe(max(0.0, self._now() - since))

    def from_upstream(self, message: Message, binary: bool = False) -> Verdict:
        """A whole upstream message; binary ones are passed on untouched."""
        self.upstream_messages += 1
        if binary:
            return PASS
        if isinstance(message, str):  # the sideband's `websockets` hands text over decoded
            message = message.encode()
        kind = passthrough_type(message, PASSTHROUGH_SERVER_TYPES)
        if kind is not None:
            if self._first_audio_since and kind == AUDIO_DELTA:
                self._first_audio_heard()
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return PASS  # not ours to judge; the client's SDK will report it
        if not isinstance(event, dict):
            return PASS
        now = self._now()
        kind = event.get("type")
        if kind == "response.created":
            self._response_created(event, now)
        elif kind == "response.done":
            self._first_audio_since = 0.0  # a response without audio: nothing to observe
        return self._apply(self.governor.on_server_event(event, now))

    def _response_created(self, event: dict[str, object], now: float) -> None:
        """A response's span starts; one upstream starts itself (server VAD) is requested now."""
        response = event.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        if isinstance(response_id, str):
            self.effects.trace.response_created(response_id)
        if not self._first_audio_since:
            self._first_audio_since = now

    def next_deadline_in(self) -> float | None:
        """Seconds until the governor next has something timed to do (None: nothing is timed)."""
        deadline = self.governor.next_deadline()
        return None if deadline is None else max(0.0, deadline - self._now())

    def tick(self) -> Verdict:
        return self._apply(self.governor.on_tick(self._now()))

    @property
    def responses_in_flight(self) -> bool:
        """Upstream may still be producing a response whose `response.done` has not been seen."""
        return self.governor.responses_in_flight

    @property
    def usage_pending(self) -> bool:
        """Upstream owes the usage of a response in flight or of an unfinished transcription."""
        return self.governor.usage_pending

    @property
    def awaiting_upstream(self) -> bool:
        """After `abandon_responses`: upstream may still announce or bill a response the ledger lacks."""
        return self.governor.awaiting_upstream

    def abandon_responses(self) -> Verdict:
        """The session ends on the client's side or voxgate's: the messages that cancel the
        responses in flight and fence the input audio (the governor's `on_client_gone`).

        The shell keeps feeding `from_upstream` until `awaiting_upstream` is False, so every
        `response.done` (which carries what upstream bills) is metered and recorded.
        """
        return self._apply(self.governor.on_client_gone(self._now()))

    def responses_unbilled(self, cause: str) -> None:
        """The shell stopped waiting for in-flight responses: record that they went unbilled."""
        self._apply(self.governor.on_responses_unbilled(self._now(), cause))

    def end(self, reason: str, detail: str | None = None) -> None:
        """Record the end of the session once; later calls keep the first reason."""
        if self.ended is not None:
            return
        # Reservations of responses never metered are settled at their worst case (upstream may bill them).
        self._apply(self.governor.on_session_end(self._now()))
        reason = ledger_end_reason(reason, expired=self.governor.expired)
        self.ended = SessionEnded(self.session_id, self._now(), reason, detail)
        self.effects.ledger.submit_end(self.ended)
        if self.effects.metrics is not None:
            self.effects.metrics.sessions_ended.labels(reason).inc()
        self._summarize(self.ended)

    def _summarize(self, ended: SessionEnded) -> None:
        """The session's summary log line, and the totals that end its span."""
        totals = self.effects.totals
        self.effects.trace.end(
            ended.end_reason, totals.responses, totals.input_tokens, totals.output_tokens, totals.cost_micro_usd
        )
        duration = max(0.0, ended.ended_at - self.started.started_at)
        fields = {
            "event": "session.summary",
            "transport": self.started.transport,
            "model": self.started.model or "",
            "end_reason": ended.end_reason,
            "duration_s": round(duration, 3),
            "responses": totals.responses,
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cost_micro_usd": totals.cost_micro_usd,
        }
        log.info(
            "session %s ended (%s) after %.1f s: %d responses, %d micro-USD",
            self.session_id,
            ended.end_reason,
            duration,
            totals.responses,
            totals.cost_micro_usd,
            extra={**self.log_fields, "fields": fields},
        )

    async def aclose(self) -> None:
        """After `end()`: finish pending shared-state work and give back the concurrency lease."""
        await self.effects.stop()
        if self.ended is None:  # handed over to another replica (a sideband on drain): its span ends here
            totals = self.effects.totals
            self.effects.trace.end(
                "handed_over", totals.responses, totals.input_tokens, totals.output_tokens, totals.cost_micro_usd
            )
        if self.model_gate is not None:
            await self.model_gate.settled()  # a lease counted after its release would be taken again
        if self.leased:
            self.leased = False
            await self.effects.release_lease()
