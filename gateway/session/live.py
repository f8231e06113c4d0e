"""One live Realtime session as any transport shell sees it.

`LiveSession` sits between a transport (the frame-splicing relay, the WebRTC sideband
monitor) and the pure `SessionGovernor`. It decides which messages need
decoding, feeds the governor, persists what the governor asks to persist, and tells the
transport what to send where. It owns no socket and never awaits, so every transport
drives it the same way:

    verdict = live.from_client(message)     # or .from_upstream(message) / .tick()
    if verdict.forward: send the original message on
    send verdict.to_client / verdict.to_upstream; if verdict.close: close both sides

A verdict whose `durable` future is set carries a billed record (a `response.done`'s usage):
a shell that can hold the message waits for that future before it sends anything toward the
client (docs/relay.md); one that cannot (the sideband, which forwards nothing) ignores it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from gateway.ledger.writer import LedgerWriter, SessionEnded, SessionStarted
from policies.actions import (
    Action,
    AuditEvent,
    CloseSession,
    Forward,
    ForwardRewritten,
    Persist,
    RateLimitsRecord,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
    TranscriptionRecord,
    UsageRecord,
)
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

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.session.enforcement import Enforcement, SessionEffects

Message = str | bytes
Deliver = Callable[["Verdict"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a transport does with one message (or tick)."""

    forward: bool
    to_client: tuple[str, ...] = ()
    to_upstream: tuple[str, ...] = ()
    close: CloseSession | None = None
    # Resolves once the billed record this message produced is durable (LedgerWriter.submit_durable).
    durable: asyncio.Future[None] | None = None


PASS = Verdict(forward=True)
HOLD = Verdict(forward=False)


def _encode(event: object) -> str:
    return orjson.dumps(event).decode()


def _verdict(
    actions: Sequence[Action],
    ledger: LedgerWriter,
    effects: SessionEffects | None = None,
    metrics: GatewayMetrics | None = None,
) -> Verdict:
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
            record = action.record
            if isinstance(record, UsageRecord | TranscriptionRecord):
                durable = ledger.submit_durable(record)
            else:
                ledger.submit(record)
            if metrics is not None and isinstance(record, UsageRecord):
                metrics.responses.labels(record.model, record.status).inc()
                metrics.cost.labels(record.model).inc(record.cost_micro_usd)
            if effects is not None:
                if isinstance(record, RateLimitsRecord):
                    effects.submit(("headroom", record))
                elif isinstance(record, TranscriptionRecord):
                    settle_id = f"tr:{record.session_id}:{record.item_id}:{record.content_index}"
                    effects.submit(("spend", settle_id, record.cost_micro_usd))
        elif isinstance(action, ReserveBudget | SettleBudget):
            if effects is not None:
                effects.submit(action)
        elif isinstance(action, AuditEvent):
            ledger.submit(action)
            if metrics is not None:
                metrics.policy_decisions.labels(action.kind).inc()
        elif isinstance(action, SendToClient):
            to_client.append(_encode(action.event))
        elif isinstance(action, SendToUpstream):
            to_upstream.append(_encode(action.event))
        elif isinstance(action, ForwardRewritten):
            rewritten = _encode(action.event)
        elif isinstance(action, CloseSession):
            close = action
    if not (to_client or to_upstream or close or rewritten or durable):
        return PASS if forward else HOLD
    if rewritten is not None:
        # A rewritten event replaces the original on its way to the same destination.
        return Verdict(False, tuple(to_client), (rewritten, *to_upstream), close, durable)
    return Verdict(forward, tuple(to_client), tuple(to_upstream), close, durable)


class LiveSession:
    """Meters and polices one session for whichever transport carries it."""

    def __init__(
        self,
        governor: SessionGovernor,
        ledger: LedgerWriter,
        started: SessionStarted,
        clock: Callable[[], float] = time.time,
        effects: SessionEffects | None = None,
        enforcement: Enforcement | None = None,
        leased: bool = False,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.governor = governor
        self.ledger = ledger
        self.started = started
        self.clock = clock
        self.effects = effects
        self.enforcement = enforcement
        self.leased = leased
        self.metrics = metrics
        self.ended: SessionEnded | None = None
        self.client_messages = 0
        self.upstream_messages = 0
        self._deliver: Deliver | None = None
        self._note_audio = governor.note_client_activity  # bound once: it runs for every audio frame
        ledger.submit(started)

    def attach(self, deliver: Deliver) -> None:
        """The transport's way to receive verdicts that arrive later (reservations, broadcasts)."""
        self._deliver = deliver
        if self.effects is not None:
            self.effects.start(self)

    async def _send_later(self, actions: Sequence[Action]) -> None:
        verdict = self._apply(actions)
        if self._deliver is not None and verdict is not HOLD:
            await self._deliver(verdict)

    def _apply(self, actions: Sequence[Action]) -> Verdict:
        if self.effects is None:
            actions = self._grant_locally(actions)
        return _verdict(actions, self.ledger, self.effects, self.metrics)

    def _grant_locally(self, actions: Sequence[Action]) -> Sequence[Action]:
        # Without shared state (no enforcement configured) every reservation is granted at once.
        out: list[Action] = []
        for action in actions:
            if isinstance(action, ReserveBudget):
                out.extend(self._grant_locally(self.governor.on_reservation(action.reservation_id, True, self.clock())))
            else:
                out.append(action)
        return out

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
        await self._send_later(self.governor.on_reservation(reservation_id, granted, self.clock()))

    async def budget_exhausted(self, now: float) -> None:
        await self._send_later(self.governor.on_budget_exhausted(now))

    async def policy_changed(self, policy: TenantPolicy, now: float) -> None:
        if self.effects is not None:
            self.effects.policy = policy
        await self._send_later(self.governor.on_policy_changed(policy, now))

    @property
    def session_id(self) -> str:
        return self.started.session_id

    def from_client(self, message: Message, binary: bool = False) -> Verdict:
        """A whole client message. Text may come as `str` or as its UTF-8 bytes."""
        self.client_messages += 1
        now = self.clock()
        if binary:
            return self._apply(self.governor.on_client_garbage("Binary frames are not supported; send JSON text.", now))
        if isinstance(message, str):
            message = message.encode()
        if passthrough_type(message, PASSTHROUGH_CLIENT_TYPES) is not None:
            self.governor.note_client_activity(now, len(message))
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return self._apply(self.governor.on_client_garbage(f"Invalid JSON: {exc.msg}.", now))
        if not isinstance(event, dict):
            return self._apply(self.governor.on_client_garbage("An event must be a JSON object.", now))
        return self._apply(self.governor.on_client_event(event, now))

    def client_audio(self, message: bytes) -> bool:
        """The splicing relay's fast path for one whole client text message (UTF-8 bytes).

        True: it is an audio append, noted as activity, to be forwarded as it is. False:
        nothing happened; the relay must call `from_client`.
        """
        if exact_passthrough(message, 0, len(message), CLIENT_EXACT_PREFIXES):
            self.client_messages += 1
            self._note_audio(self.clock(), len(message))
            return True
        return False

    def upstream_content(self, frame: bytes, start: int, end: int) -> bool:
        """The splicing relay's fast path for the upstream text message `frame[start:end]`.

        True: it is a content delta, to be forwarded as it is. False: nothing happened;
        the relay must call `from_upstream`.
        """
        if exact_passthrough(frame, start, end, SERVER_EXACT_PREFIXES):
            self.upstream_messages += 1
            return True
        return False

    def from_upstream(self, message: Message, binary: bool = False) -> Verdict:
        """A whole upstream message; binary ones are passed on untouched."""
        self.upstream_messages += 1
        if binary:
            return PASS
        if isinstance(message, str):  # the sideband's `websockets` hands text over decoded
            message = message.encode()
        if passthrough_type(message, PASSTHROUGH_SERVER_TYPES) is not None:
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return PASS  # not ours to judge; the client's SDK will report it
        if not isinstance(event, dict):
            return PASS
        return self._apply(self.governor.on_server_event(event, self.clock()))

    def next_deadline_in(self) -> float | None:
        """Seconds until the governor next has something timed to do (None: nothing is timed)."""
        deadline = self.governor.next_deadline()
        return None if deadline is None else max(0.0, deadline - self.clock())

    def tick(self) -> Verdict:
        return self._apply(self.governor.on_tick(self.clock()))

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
        return self._apply(self.governor.on_client_gone(self.clock()))

    def responses_unbilled(self, cause: str) -> None:
        """The shell stopped waiting for in-flight responses: record that they went unbilled."""
        self._apply(self.governor.on_responses_unbilled(self.clock(), cause))

    def end(self, reason: str, detail: str | None = None) -> None:
        """Record the end of the session once; later calls keep the first reason."""
        if self.ended is not None:
            return
        # Reservations of responses never metered are settled at their worst case (upstream may bill them).
        self._apply(self.governor.on_session_end(self.clock()))
        if self.governor.expired and reason in ("upstream_closed", "upstream_error"):
            reason = "session_expired"
        self.ended = SessionEnded(self.session_id, self.clock(), reason, detail)
        self.ledger.submit(self.ended)
        if self.metrics is not None:
            self.metrics.sessions_ended.labels(reason).inc()

    async def aclose(self) -> None:
        """After `end()`: finish pending shared-state work and give back the concurrency lease."""
        if self.effects is not None:
            await self.effects.stop()
        if self.enforcement is not None and self.leased:
            await self.enforcement.release(self.started.tenant_id, self.session_id)
            self.leased = False
