"""Late verdicts: what a session decides off its frame path reaches the transport one way.

Budget reservations answered by the shared state, budget exhaustion and policy changes
broadcast by other replicas, and ticks all produce verdicts while no frame is being
handled. `LateVerdicts` hands them to the transport's `act` while the session is live,
drops them once the transport has stopped taking them, and pokes the ticker after each
(a budget cut sets a close deadline nearer than the next tick).
"""

from __future__ import annotations

from gateway.session.ticker import Ticker
from gateway.session.verdict import HOLD, Deliver, Verdict


class LateVerdicts:
    """The transport's `act`, guarded: nothing after `close()`, the ticker poked after each."""

    def __init__(self, act: Deliver, ticker: Ticker | None = None) -> None:
        self.act = act
        self.ticker = ticker
        self.closed = False

    async def __call__(self, verdict: Verdict) -> None:
        if self.closed or verdict is HOLD:
            return
        await self.act(verdict)
        if self.ticker is not None and not self.closed:
            self.ticker.poke()

    def close(self) -> None:
        self.closed = True
