"""The one clock of the shell: wall time, a monotonic time, sleeping, timers and timeouts, injectable.

Everything in `gateway/` that reads the time or waits for it takes a `Clock` (through
`GatewayServices.clock` or its constructor) instead of calling `time`, `asyncio.sleep`,
`loop.call_later` or `asyncio.timeout` directly, so a test can run the same code on
`tests/support/clock.py:FakeClock` and move time forward in one step instead of waiting for it.
`policies/` never reads a clock: the shell passes `now` in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Timer(Protocol):
    """A callback scheduled by `Clock.call_later`."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch: what the ledger records and budget days use."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: for deadlines and intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run `callback` (in the running event loop) once `delay` seconds of this clock passed."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """`asyncio.timeout` on this clock: the block is cancelled and `TimeoutError` raised once
        `seconds` passed (None: never)."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
