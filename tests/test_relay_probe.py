"""The relay probe: one timed read per armed side, nothing on other reads, bounded rounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from gateway.telemetry.relay_probe import RelayProbe, sample_relays
from tests.support.clock import FakeClock


class Transport:
    """Stands in for an asyncio transport: counts `set_protocol` (uvloop's handler refresh)."""

    def __init__(self) -> None:
        self.refreshes = 0

    def set_protocol(self, protocol: object) -> None:
        self.refreshes += 1

    def is_closing(self) -> bool:
        return False


class Protocol:
    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.data_received = self.reads.append  # an instance attribute, as the relay's splice is


class Observed:
    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, amount: float) -> None:
        self.values.append(amount)


class SteppingClock(FakeClock):
    """Each `monotonic()` read returns the next of a fixed sequence."""

    def __init__(self, readings: Iterator[float]) -> None:
        super().__init__()
        self._readings = readings

    def monotonic(self) -> float:
        return next(self._readings)


def test_an_armed_side_times_one_read_then_reads_directly_again() -> None:
    protocol, transport, observed = Protocol(), Transport(), Observed()
    direct = protocol.data_received
    probe = RelayProbe(SteppingClock(iter([10.0, 10.25, 20.0, 20.5])))
    probe.watch(protocol, transport, observed)
    probe.arm()
    timed = protocol.data_received
    assert timed != direct and transport.refreshes == 1
    timed(b"a")
    assert protocol.data_received == direct and transport.refreshes == 2
    assert observed.values == [0.25] and protocol.reads == [b"a"]
    protocol.data_received(b"b")  # not armed: not timed
    assert observed.values == [0.25] and protocol.reads == [b"a", b"b"]
    probe.arm()
    assert protocol.data_received is timed  # the same wrapper every time: arming allocates nothing
    probe.arm()  # already armed: no second refresh
    assert transport.refreshes == 3
    protocol.data_received(b"c")
    assert observed.values == [0.25, 0.5]


def test_disarm_restores_the_direct_handler_without_a_sample() -> None:
    protocol, transport, observed = Protocol(), Transport(), Observed()
    direct = protocol.data_received
    probe = RelayProbe(FakeClock())
    probe.watch(protocol, transport, observed)
    probe.arm()
    probe.disarm()
    assert protocol.data_received == direct
    protocol.data_received(b"x")
    assert observed.values == [] and protocol.reads == [b"x"]


class Session:
    def __init__(self) -> None:
        self.protocol = Protocol()
        self.probe = RelayProbe(FakeClock())
        self.probe.watch(self.protocol, Transport(), Observed())

    def armed(self) -> bool:
        return self.protocol.data_received != self.protocol.reads.append


async def test_each_round_arms_at_most_the_limit_and_every_session_gets_its_turn() -> None:
    clock = FakeClock()
    sessions = [Session() for _ in range(5)]
    sampler = asyncio.create_task(sample_relays(lambda: [*sessions, object()], clock, period=1.0, limit=2))
    await asyncio.sleep(0)
    rounds: list[list[int]] = []
    for _ in range(3):
        await clock.advance(1.0)
        rounds.append([i for i, s in enumerate(sessions) if s.armed()])
        for s in sessions:
            s.probe.disarm()
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    assert rounds == [[0, 1], [2, 3], [0, 4]]


async def test_under_the_limit_every_session_is_armed_each_round() -> None:
    clock = FakeClock()
    sessions = [Session() for _ in range(3)]
    sampler = asyncio.create_task(sample_relays(lambda: sessions, clock, period=1.0, limit=64))
    await asyncio.sleep(0)
    await clock.advance(1.0)
    assert all(s.armed() for s in sessions)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
