"""Background loops stop even when something inside them swallows the cancellation."""

from __future__ import annotations

import asyncio

from gateway.background import stop_tasks


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
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if self.swallow <= 0:
                    raise
                self.swallow -= 1  # swallowed, as if it had been a failed command


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    loop = SwallowingLoop(swallow=2)
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(stop_tasks([task], timeout=5), 3)
    assert task.cancelled()


async def test_a_stop_flag_ends_a_loop_that_keeps_swallowing() -> None:
    loop = SwallowingLoop(swallow=10**6)
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    loop.stopping = True
    await asyncio.wait_for(stop_tasks([task], timeout=5), 3)
    assert task.done()
