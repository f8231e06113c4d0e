"""A fake `gateway.clock.Clock`: time stands still until the test moves it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import weakref
from collections.abc import AsyncIterator, Callable, Sequence


class FakeClock:
    """Wall and monotonic time that move only on `advance`; sleepers, timers and timeouts fire
    in deadline order."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._wall0 = start
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        # each task's latest sleep (not its timers)
        self._sleeping: weakref.WeakKeyDictionary[asyncio.Task[object], asyncio.Future[None]] = (
            weakref.WeakKeyDictionary()
        )
        self._order = itertools.count()

    def time(self) -> float:
        return self._wall0 + self._now

    def monotonic(self) -> float:
        return self._now

    def _at(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        return future

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = self._at(seconds)
        task = asyncio.current_task()
        if task is not None:
            self._sleeping[task] = future
        await future

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.Future[None]:
        """Run `callback` once `delay` passed on this clock; the returned future's `cancel()`
        unschedules it."""
        future = self._at(max(delay, 0.0))
        future.add_done_callback(lambda f: None if f.cancelled() else callback())
        if delay <= 0:
            future.set_result(None)
        return future

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float | None) -> AsyncIterator[object]:
        """`asyncio.timeout` whose deadline is on this clock."""
        async with asyncio.timeout(None) as scope:
            loop = asyncio.get_running_loop()
            timer = None if seconds is None else self.call_later(seconds, lambda: scope.reschedule(loop.time()))
            try:
                yield scope
            finally:
                if timer is not None:
                    timer.cancel()

    @property
    def sleepers(self) -> int:
        """How many sleeps and timers wait on this clock (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def waiting(self, task: asyncio.Task[object]) -> bool:
        """`task` sleeps on this clock (a timer it set does not count: it may be busy under a timeout)."""
        future = self._sleeping.get(task)
        return future is not None and not future.done()

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline passes, in order,
        and letting each woken task run until it waits again before moving on."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
                for _ in range(20):
                    await asyncio.sleep(0)
        self._now = target
        for _ in range(20):
            await asyncio.sleep(0)


STEP_S = 0.05


async def run_until(clock: FakeClock, until_s: float, loops: Sequence[asyncio.Task[object]] = ()) -> None:
    """Move `clock` to `until_s` (monotonic) a step at a time, every task woken finishing its round
    before the next step: each of `loops` (a replica's background loops, whose rounds take real round
    trips to the stores, as many as there are sessions to look at) waits on the clock again, and the
    other sleepers are back or their number held still for a tenth of a second (one ended meanwhile).
    Real time is bounded: ten seconds a step."""
    while clock.monotonic() < until_s - 1e-9:
        sleepers = clock.sleepers
        await clock.advance(min(STEP_S, until_s - clock.monotonic()))
        async with asyncio.timeout(10):
            while not all(task.done() or clock.waiting(task) for task in loops):
                await asyncio.sleep(0.01)
            last, still = -1, 0
            while clock.sleepers < sleepers and still < 10:
                await asyncio.sleep(0.01)
                still = still + 1 if clock.sleepers == last else 0
                last = clock.sleepers
