"""Sampling the relay's added latency without touching its per-frame path.

The fast relay hands every read straight to its splice (`data_received` is the splice's bound
method, looked up by the transport). Once a second, `sample_relays` arms each live relay's
`RelayProbe`: for each side, the transport's next read goes to a timing wrapper that restores
the direct handler, runs it, and observes how long voxgate held the bytes (parsing, policy,
the write onward). Every other read runs exactly the code it ran before: no counter, no
branch, no clock read. The wrapper is built once per side, not per sample, and a round arms
at most `MAX_ARMED_PER_PERIOD` sessions (rotating through the rest), so the probe's own cost
stays flat as sessions grow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("voxgate.telemetry")

SAMPLE_PERIOD_SECONDS = 1.0
MAX_ARMED_PER_PERIOD = 64  # sessions armed per round; the others wait their turn
Handler = Callable[[bytes], None]


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Side:
    __slots__ = ("armed", "handler", "monotonic", "observer", "protocol", "timed", "transport")

    def __init__(
        self, protocol: Any, transport: Any, handler: Handler, observer: Observer, monotonic: Callable[[], float]
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.handler = handler
        self.observer = observer
        self.monotonic = monotonic
        self.armed = False
        self.timed: Handler = self._timed  # bound once: arming allocates nothing

    def route(self, handler: Handler) -> None:
        self.protocol.data_received = handler
        self.transport.set_protocol(self.protocol)  # uvloop caches the bound handler: look it up again

    def _timed(self, data: bytes) -> None:
        self.armed = False
        self.route(self.handler)
        monotonic = self.monotonic
        started = monotonic()
        self.handler(data)
        self.observer.observe(monotonic() - started)


class RelayProbe:
    """Times the next read of each watched side whenever it is armed."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._sides: list[_Side] = []
        self._clock = clock

    def watch(self, protocol: Any, transport: Any, observer: Observer) -> None:
        """`protocol` reads through its `data_received` instance attribute (the relay's handler)."""
        handler = protocol.__dict__.get("data_received")
        if handler is not None:
            self._sides.append(_Side(protocol, transport, handler, observer, self._clock.monotonic))

    def arm(self) -> None:
        for side in self._sides:
            if not side.armed and not side.transport.is_closing():
                side.armed = True
                side.route(side.timed)

    def disarm(self) -> None:
        for side in self._sides:
            if side.armed:
                side.armed = False
                side.route(side.handler)


async def sample_relays(
    sessions: Callable[[], Iterable[Any]],
    clock: Clock = SYSTEM_CLOCK,
    period: float = SAMPLE_PERIOD_SECONDS,
    limit: int = MAX_ARMED_PER_PERIOD,
) -> None:
    """Every `period` seconds until cancelled, arm the probes of up to `limit` live sessions,
    taking turns when there are more."""
    turn = 0
    while True:
        await clock.sleep(period)
        probes = [p for p in (getattr(s, "probe", None) for s in sessions()) if isinstance(p, RelayProbe)]
        if len(probes) > limit:
            start = turn % len(probes)
            probes = (probes[start:] + probes[:start])[:limit]
            turn = start + limit
        for probe in probes:
            with contextlib.suppress(Exception):  # a closing transport: the next round skips it
                probe.arm()
