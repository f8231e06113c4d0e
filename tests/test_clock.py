"""The clock seam: the real clock is the system's, the fake one moves only when told."""

from __future__ import annotations

import asyncio
import time

from gateway.clock import SYSTEM_CLOCK
from tests.support.clock import FakeClock


async def test_system_clock_reads_the_system_time() -> None:
    before = time.time()
    assert before <= SYSTEM_CLOCK.time() <= time.time()
    m0 = SYSTEM_CLOCK.monotonic()
    await SYSTEM_CLOCK.sleep(0.02)
    assert SYSTEM_CLOCK.monotonic() - m0 >= 0.02


async def test_fake_clock_wakes_sleepers_in_deadline_order_only_when_advanced() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper("late", 10)), asyncio.create_task(sleeper("early", 3))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    await clock.advance(2.9)
    assert woke == []
    await clock.advance(0.1)
    assert woke == [("early", 3.0)]
    wall = clock.time()
    await clock.advance(100)
    assert woke == [("early", 3.0), ("late", 10.0)]
    assert clock.time() == wall + 100
    await asyncio.gather(*tasks)
