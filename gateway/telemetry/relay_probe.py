"""Sampling the relay's added latency without touching its per-frame path.

The fast relay hands every read straight to its splice (`data_received` is the splice's bound
method, looked up by the transport). Once a second, `sample_relays` arms each live relay's
`RelayProbe`: for each side, the transport's next read goes to a timing wrapper that restores
the direct handler, runs it, and observes how long voxgate held the bytes (parsing, policy,
the write onward). Every other read runs exactly the code it ran before: no counter, no
branch, no clock read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("voxgate.telemetry")

SAMPLE_PERIOD_SECONDS = 1.0
Handler = Callable[[bytes], None]


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Side:
    __slots__ = ("armed", "handler", "observer", "protocol", "transport")

    def __init__(self, protocol: Any, transport: Any, handler: Handler, observer: Observer) -> None:
        self.protocol = protocol
        self.transport = transport
        self.handler = handler
        self.observer = observer
        self.armed = False


class RelayProbe:
    """Times the next read of each watched side whenever it is armed."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._sides: list[_Side] = []
        self._clock = clock

    def watch(self, protocol: Any, transport: Any, observer: Observer) -> None:
        """`protocol` reads through its `data_received` instance attribute (the relay's handler)."""
        handler = protocol.__dict__.get("data_received")
        if handler is not None:
            self._sides.append(_Side(protocol, transport, handler, observer))

    def arm(self) -> None:
        for side in self._sides:
            if not side.armed and not side.transport.is_closing():
                side.armed = True
                self._route(side, self._timed(side))

    def disarm(self) -> None:
        for side in self._sides:
            if side.armed:
                side.armed = False
                self._route(side, side.handler)

    @staticmethod
    def _route(side: _Side, handler: Handler) -> None:
        side.protocol.data_received = handler
        side.transport.set_protocol(side.protocol)  # uvloop caches the bound handler: look it up again

    def _timed(self, side: _Side) -> Handler:
        monotonic = self._clock.monotonic

        def timed(data: bytes) -> None:
            side.armed = False
            self._route(side, side.handler)
            started = monotonic()
            side.handler(data)
            side.observer.observe(monotonic() - started)

        return timed


async def sample_relays(
    sessions: Callable[[], Iterable[Any]], clock: Clock = SYSTEM_CLOCK, period: float = SAMPLE_PERIOD_SECONDS
) -> None:
    """Arm the probe of every live session that has one, every `period` seconds, until cancelled."""
    while True:
        await clock.sleep(period)
        for session in list(sessions()):
            probe = getattr(session, "probe", None)
            if isinstance(probe, RelayProbe):
                with contextlib.suppress(Exception):  # a closing transport: the next round skips it
                    probe.arm()
