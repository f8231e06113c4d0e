"""One live Realtime session as any transport shell sees it.

`LiveSession` sits between a transport (the ASGI relay today, a frame-splicing relay or a
WebRTC sideband later) and the pure `SessionGovernor`. It decides which messages need
decoding, feeds the governor, persists what the governor asks to persist, and tells the
transport what to send where. It owns no socket and never awaits, so every transport
drives it the same way:

    verdict = live.from_client(message)     # or .from_upstream(message) / .tick()
    if verdict.forward: send the original message on
    send verdict.to_client / verdict.to_upstream; if verdict.close: close both sides
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from gateway.ledger import LedgerWriter, SessionEnded, SessionStarted
from policies.actions import (
    Action,
    CloseSession,
    Forward,
    ForwardRewritten,
    Persist,
    SendToClient,
    SendToUpstream,
)
from policies.frames import PASSTHROUGH_CLIENT_TYPES, PASSTHROUGH_SERVER_TYPES, passthrough_type
from policies.governor import SessionGovernor

Message = str | bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a transport does with one message (or tick)."""

    forward: bool
    to_client: tuple[str, ...] = ()
    to_upstream: tuple[str, ...] = ()
    close: CloseSession | None = None


PASS = Verdict(forward=True)
HOLD = Verdict(forward=False)


def _encode(event: object) -> str:
    return orjson.dumps(event).decode()


def _verdict(actions: Sequence[Action], ledger: LedgerWriter) -> Verdict:
    forward = False
    to_client: list[str] = []
    to_upstream: list[str] = []
    close: CloseSession | None = None
    rewritten: str | None = None
    for action in actions:
        if isinstance(action, Forward):
            forward = True
        elif isinstance(action, Persist):
            ledger.submit(action.record)
        elif isinstance(action, SendToClient):
            to_client.append(_encode(action.event))
        elif isinstance(action, SendToUpstream):
            to_upstream.append(_encode(action.event))
        elif isinstance(action, ForwardRewritten):
            rewritten = _encode(action.event)
        elif isinstance(action, CloseSession):
            close = action
    if not (to_client or to_upstream or close or rewritten):
        return PASS if forward else HOLD
    if rewritten is not None:
        # A rewritten event replaces the original on its way to the same destination.
        return Verdict(False, tuple(to_client), (rewritten, *to_upstream), close)
    return Verdict(forward, tuple(to_client), tuple(to_upstream), close)


class LiveSession:
    """Meters and polices one session for whichever transport carries it."""

    def __init__(
        self,
        governor: SessionGovernor,
        ledger: LedgerWriter,
        started: SessionStarted,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.governor = governor
        self.ledger = ledger
        self.started = started
        self.clock = clock
        self.ended: SessionEnded | None = None
        self.client_messages = 0
        self.upstream_messages = 0
        ledger.submit(started)

    @property
    def session_id(self) -> str:
        return self.started.session_id

    def from_client(self, message: Message, binary: bool = False) -> Verdict:
        """A whole client message. Text may come as `str` or as its UTF-8 bytes."""
        self.client_messages += 1
        now = self.clock()
        if binary:
            return _verdict(self.governor.on_client_garbage("Binary frames are not supported; send JSON text.", now),
                            self.ledger)  # fmt: skip
        if passthrough_type(message, PASSTHROUGH_CLIENT_TYPES) is not None:
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return _verdict(self.governor.on_client_garbage(f"Invalid JSON: {exc.msg}.", now), self.ledger)
        if not isinstance(event, dict):
            return _verdict(self.governor.on_client_garbage("An event must be a JSON object.", now), self.ledger)
        return _verdict(self.governor.on_client_event(event, now), self.ledger)

    def from_upstream(self, message: Message, binary: bool = False) -> Verdict:
        """A whole upstream message; binary ones are passed on untouched."""
        self.upstream_messages += 1
        if binary:
            return PASS
        if passthrough_type(message, PASSTHROUGH_SERVER_TYPES) is not None:
            return PASS
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            return PASS  # not ours to judge; the client's SDK will report it
        if not isinstance(event, dict):
            return PASS
        return _verdict(self.governor.on_server_event(event, self.clock()), self.ledger)

    def tick(self) -> Verdict:
        return _verdict(self.governor.on_tick(self.clock()), self.ledger)

    def end(self, reason: str, detail: str | None = None) -> None:
        """Record the end of the session once; later calls keep the first reason."""
        if self.ended is not None:
            return
        if self.governor.expired and reason in ("upstream_closed", "upstream_error"):
            reason = "session_expired"
        self.ended = SessionEnded(self.session_id, self.clock(), reason, detail)
        self.ledger.submit(self.ended)
