"""The ticker: wakes a session's governor for time, at its next deadline and at least once a period.

docs/governor.md promises a tick at least once a second and a close deadline met to the
timer's precision: the ticker sleeps until `LiveSession.next_deadline_in()` (or a period,
whichever is sooner) on the shell's `Clock`, and `poke()` makes it look again when a
verdict produced off the frame path may have set a nearer deadline (a budget cut).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.session.verdict import Deliver, Verdict

log = logging.getLogger("voxgate.session")

TICK_SECONDS = 1.0
# Wake just past a deadline: the governor acts at `now >= deadline`; never spin on one already due.
PAST_DEADLINE_S = 0.001
MIN_SLEEP_S = 0.005


class Timed(Protocol):
    """What the ticker needs of a live session."""

    def next_deadline_in(self) -> float | None: ...

    def tick(self) -> Verdict: ...


class Ticker:
    """One session's timer task; `act` carries out each tick's verdict on the transport."""

    def __init__(self, live: Timed, act: Deliver, clock: Clock = SYSTEM_CLOCK, period: float = TICK_SECONDS) -> None:
        self.live = live
        self.act = act
        self.clock = clock
        self.period = period
        self._task: asyncio.Task[None] | None = None
        self._sleep: asyncio.Future[None] | None = None
        self._wake_at = 0.0
        self._poked = False
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def poke(self) -> None:
        """The governor may have a nearer deadline than the one slept for: look again."""
        sleep = self._sleep
        if sleep is not None and not sleep.done() and self.clock.monotonic() + self._delay() < self._wake_at:
            self._poked = True
            sleep.cancel()

    def _delay(self) -> float:
        due = self.live.next_deadline_in()
        if due is None or due >= self.period:
            return self.period
        return max(due, MIN_SLEEP_S) + PAST_DEADLINE_S

    async def _run(self) -> None:
        while True:
            delay = self._delay()
            self._wake_at = self.clock.monotonic() + delay
            self._sleep = asyncio.ensure_future(self.clock.sleep(delay))
            try:
                await self._sleep
            except asyncio.CancelledError:
                if self._stopped or not self._poked:  # the ticker itself was stopped
                    raise
                self._poked = False  # poked: sleep again, to the nearer deadline
                continue
            try:
                await self.act(self.live.tick())
            except Exception:  # the transport's `act` ends its session on failure; the ticker goes on
                log.exception("a tick failed")
