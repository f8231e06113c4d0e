"""The shell kit: what every transport puts around its `LiveSession`, so none re-implements it.

A transport shell (the fast relay, the WebRTC sideband) does three things itself: it feeds
messages to the `LiveSession`, carries out the `Verdict`s, and ends the session with an
entry of `gateway.session.close_reasons`. Everything else it takes from here and from
`gateway.session.assembly`:

1. `assemble(services, plan)` builds the governor, its effects and the `LiveSession`.
2. `SessionKit(live, act, clock).start()` delivers late verdicts (reservations answered,
   broadcasts) and ticks at the governor's `next_deadline()` to `act`, the transport's way to
   carry out a verdict between frames.
3. When the session ends: `kit.stop()` (no more ticks or late verdicts), `live.end(reason)`,
   then `await live.aclose()` (pending shared-state work, the concurrency lease).
"""

from __future__ import annotations

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.session.late import LateVerdicts
from gateway.session.live import LiveSession
from gateway.session.ticker import TICK_SECONDS, Ticker
from gateway.session.verdict import Deliver


class SessionKit:
    """One session's ticker and late-verdict delivery, started and stopped together."""

    def __init__(self, live: LiveSession, act: Deliver, clock: Clock = SYSTEM_CLOCK, period: float = TICK_SECONDS):
        self.live = live
        self.late = LateVerdicts(act)
        self.ticker = Ticker(live, self.late, clock, period)
        self.late.ticker = self.ticker

    def start(self) -> None:
        self.live.attach(self.late)
        self.ticker.start()

    def poke(self) -> None:
        """A frame may have set a nearer deadline: let the ticker look again."""
        self.ticker.poke()

    def stop(self) -> None:
        self.late.close()
        self.ticker.stop()
