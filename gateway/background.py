"""Stopping background loops even when a library swallows their cancellation.

A client library may catch the `CancelledError` raised inside one of its calls and turn it
into its own error (redis-py can, on a command cut short), which a loop then treats as a
failed round and goes on. Such a task never ends, and a shutdown awaiting it hangs. So
loops also check a stop flag (`while not self._stopping`), and `stop_tasks` cancels
again and waits a bounded time instead of forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("voxgate.background")

STOP_TIMEOUT_SECONDS = 5.0
RECANCEL_SECONDS = 0.5  # how long a cancelled task gets to end before it is cancelled again


async def stop_tasks(
    tasks: Sequence[asyncio.Task[Any]], timeout: float = STOP_TIMEOUT_SECONDS, clock: Clock = SYSTEM_CLOCK
) -> None:
    """Cancel `tasks` and wait for them, re-cancelling any that swallowed it, `timeout` at most."""
    deadline = clock.monotonic() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            log.warning("background tasks did not stop: %s", ", ".join(sorted(t.get_name() for t in pending)))
            return
        ended = asyncio.ensure_future(asyncio.wait(pending))
        timer = asyncio.ensure_future(clock.sleep(min(RECANCEL_SECONDS, remaining)))
        try:
            await asyncio.wait({ended, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            timer.cancel()
        pending = {task for task in pending if not task.done()}
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("background task %s had failed: %r", task.get_name(), task.exception())
