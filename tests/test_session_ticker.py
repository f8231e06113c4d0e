"""The shell kit's ticker on a fake clock: ticks at the governor's deadline, at least once a period."""

from __future__ import annotations

import asyncio

import pytest

from gateway.session.late import LateVerdicts
from gateway.session.ticker import PAST_DEADLINE_S, Ticker
from gateway.session.verdict import HOLD, Verdict
from tests.support.clock import FakeClock


async def settle() -> None:
    """Let the ticker's task run until it sleeps on the clock again."""
    for _ in range(20):
        await asyncio.sleep(0)


class Timed:
    """A live session whose next deadline the test sets, counting its ticks."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.deadline: float | None = None
        self.ticks: list[float] = []

    def next_deadline_in(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock.monotonic())

    def tick(self) -> Verdict:
        self.ticks.append(self.clock.monotonic())
        self.deadline = None
        return Verdict(False, to_upstream=("tick",))


async def test_ticks_once_a_period_and_just_past_a_nearer_deadline_even_one_set_while_sleeping() -> None:
    clock = FakeClock()
    live = Timed(clock)
    acted: list[Verdict] = []

    async def act(verdict: Verdict) -> None:
        acted.append(verdict)

    late = LateVerdicts(act)
    ticker = Ticker(live, late, clock, period=1.0)
    late.ticker = ticker
    ticker.start()
    await settle()
    await clock.advance(1.0)
    assert live.ticks == [1.0]
    live.deadline = 1.3  # a budget cut set a close deadline while the ticker sleeps until 2.0
    await late(Verdict(False, to_client=("cut",)))  # a late verdict pokes the ticker
    await settle()
    await clock.advance(0.3 + 2 * PAST_DEADLINE_S)
    assert live.ticks == [1.0, pytest.approx(1.3 + PAST_DEADLINE_S)]
    await settle()
    await clock.advance(1.0)
    assert len(live.ticks) == 3
    ticker.stop()
    late.close()
    await late(Verdict(False, to_client=("after the end",)))
    await late(HOLD)
    await clock.advance(5.0)
    assert len(live.ticks) == 3
    assert [v.to_client for v in acted if v.to_client] == [("cut",)]
    assert sum(v.to_upstream == ("tick",) for v in acted) == 3
