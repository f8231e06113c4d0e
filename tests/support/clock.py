"""A fake `gateway.clock.Clock`: time stands still until the test moves it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable


class FakeClock:
    """Wall and monotonic time that move only on `advance`; sleepers, timers and timeouts fire
    in deadline order."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._wall0 = start
        self._now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
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
        await self._at(seconds)

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
