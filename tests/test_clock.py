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


async def test_fake_clock_timers_fire_at_their_deadline_and_cancelled_ones_never() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_later(5, lambda: fired.append("five"))
    cancelled = clock.call_later(2, lambda: fired.append("two"))
    clock.call_later(0, lambda: fired.append("now"))
    cancelled.cancel()
    await asyncio.sleep(0)
    assert fired == ["now"]
    await clock.advance(4.9)
    assert fired == ["now"]
    await clock.advance(0.1)
    assert fired == ["now", "five"]
    await clock.advance(10)
    assert fired == ["now", "five"]


async def test_fake_clock_timeout_cancels_the_block_only_when_its_time_has_passed() -> None:
    clock = FakeClock()
    never = asyncio.Event()

    async def waits() -> str:
        try:
            async with clock.timeout(3):
                await never.wait()
        except TimeoutError:
            return f"timed out at {clock.monotonic()}"
        return "finished"

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)  # it starts waiting at time 0
    await clock.advance(2.9)
    assert not task.done()
    await clock.advance(0.1)
    assert await asyncio.wait_for(task, 1.0) == "timed out at 3.0"
    # A block that ends in time leaves no timer behind.
    async with clock.timeout(3):
        await asyncio.sleep(0)
    assert clock.sleepers == 0
    async with clock.timeout(None):  # no deadline at all
        await asyncio.sleep(0)


async def test_system_clock_timer_and_timeout_run_on_real_time() -> None:
    fired = asyncio.Event()
    SYSTEM_CLOCK.call_later(0.01, fired.set).cancel()
    SYSTEM_CLOCK.call_later(0.02, fired.set)
    m0 = SYSTEM_CLOCK.monotonic()
    await asyncio.wait_for(fired.wait(), 2.0)
    assert SYSTEM_CLOCK.monotonic() - m0 >= 0.02
    try:
        async with SYSTEM_CLOCK.timeout(0.02):
            await asyncio.Event().wait()
    except TimeoutError:
        pass
    else:
        raise AssertionError("the block outlived its timeout")
