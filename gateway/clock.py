"""The one clock of the shell: wall time, a monotonic time and sleeping, injectable.

Everything in `gateway/` that reads the time or waits for it takes a `Clock` (through
`GatewayServices.clock` or its constructor) instead of calling `time` or `asyncio.sleep`
directly, so a test can run the same code on `tests/support/clock.py:FakeClock` and move
time forward in one step instead of waiting for it. `policies/` never reads a clock: the
shell passes `now` in.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


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


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
