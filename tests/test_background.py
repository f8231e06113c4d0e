"""Background loops stop even when something inside them swallows the cancellation.

`stop_tasks` re-cancels on the clock it is given; these tests move a fake one, so the
re-cancel interval and the give-up bound cost no wall time.
"""

from __future__ import annotations

import asyncio

from gateway.background import RECANCEL_SECONDS, stop_tasks
from tests.support.clock import FakeClock


class SwallowingLoop:
    """Like a loop whose client library turns one CancelledError into its own error."""

    def __init__(self, swallow: int) -> None:
        self.swallow = swallow
        self.stopping = False
        self.rounds = 0

    async def run(self) -> None:
        while not self.stopping:
            self.rounds += 1
            try:
                await asyncio.sleep(0.001)
            except asyncio.CancelledError:
                if self.swallow <= 0:
                    raise
                self.swallow -= 1  # swallowed, as if it had been a failed command


async def started(loop: SwallowingLoop) -> asyncio.Task[None]:
    task = asyncio.create_task(loop.run())
    while loop.rounds == 0:
        await asyncio.sleep(0)
    return task


async def run_down(clock: FakeClock, stopping: asyncio.Task[None]) -> int:
    """Move `clock` one re-cancel interval at a time until `stopping` is done; how many it took."""
    intervals = 0
    async with asyncio.timeout(5):  # real time: a hang fails here, not at pytest's timeout
        while not stopping.done():
            for _ in range(100):  # let every ready task run first: advance only a clock all of them wait on
                await asyncio.sleep(0)
            if stopping.done():
                break
            if clock.sleepers:
                await clock.advance(RECANCEL_SECONDS)
                intervals += 1
            else:
                await asyncio.sleep(0.001)
    await stopping
    return intervals


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    clock = FakeClock()
    loop = SwallowingLoop(swallow=2)
    task = await started(loop)
    intervals = await run_down(clock, asyncio.create_task(stop_tasks([task], timeout=5, clock=clock)))
    assert task.cancelled()
    assert intervals == 2  # one re-cancel per swallowed cancellation


async def test_a_stop_flag_ends_a_loop_that_keeps_swallowing() -> None:
    clock = FakeClock()
    loop = SwallowingLoop(swallow=10**6)
    task = await started(loop)
    loop.stopping = True
    assert await run_down(clock, asyncio.create_task(stop_tasks([task], timeout=5, clock=clock))) == 0
    assert task.done() and not task.cancelled()


async def test_a_task_that_never_stops_is_given_up_on_after_the_timeout(caplog) -> None:
    clock = FakeClock()
    loop = SwallowingLoop(swallow=10**6)
    task = await started(loop)
    intervals = await run_down(clock, asyncio.create_task(stop_tasks([task], timeout=5, clock=clock)))
    assert intervals == round(5 / RECANCEL_SECONDS)
    assert clock.monotonic() == 5.0
    assert not task.done()
    assert "background tasks did not stop" in caplog.text
    loop.stopping = True
    await asyncio.wait_for(task, 1)
