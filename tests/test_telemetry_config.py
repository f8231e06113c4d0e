"""Tracing is off unless the standard OTEL_* variables ask for it, and then only what voxgate ships;
the relay's latency probe times one read when armed and leaves every other read alone."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gateway.telemetry import NO_TRACE, start_session_trace
from gateway.telemetry.relay_probe import RelayProbe
from gateway.telemetry.tracing import TracingConfigError, build_exporters, tracing_requested
from tests.support.clock import FakeClock


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "voxgate"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_asked(env: dict[str, str], on: bool) -> None:
    assert tracing_requested(env) is on


def test_without_tracing_every_session_shares_the_no_op_trace() -> None:
    trace = start_session_trace("websocket")
    assert trace is NO_TRACE
    assert not trace.recording and trace.ids() is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_an_exporter_voxgate_does_not_ship_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError):
        build_exporters(env)


async def test_serve_refuses_an_unsupported_otlp_protocol_in_one_line() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OTEL_"))},
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("voxgate")), "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    assert proc.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf" in lines[0], lines


class FakeTransport:
    def __init__(self, protocol: object) -> None:
        self.protocol = protocol
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def read(self, data: bytes) -> None:
        """What an event loop does: the protocol's `data_received`, looked up per read (or re-cached)."""
        self.protocol.data_received(data)  # type: ignore[attr-defined]


class ReadClock(FakeClock):
    """Monotonic time that moves while a read is handled (the probe reads it around the handler)."""

    def step(self, seconds: float) -> None:
        self._now += seconds


class Splice:
    def __init__(self, clock: ReadClock) -> None:
        self.reads: list[bytes] = []
        self.clock = clock

    def client_data(self, data: bytes) -> None:
        self.clock.step(0.000_25)  # the work voxgate does on this read
        self.reads.append(data)


class Protocol:
    pass


class Histogram:
    def __init__(self) -> None:
        self.observed: list[float] = []

    def observe(self, amount: float) -> None:
        self.observed.append(amount)


def test_an_armed_probe_times_exactly_the_next_read_and_restores_the_direct_path() -> None:
    clock = ReadClock()
    splice, protocol, histogram = Splice(clock), Protocol(), Histogram()
    protocol.data_received = splice.client_data  # type: ignore[attr-defined]  # the relay's shadowing
    direct = protocol.data_received  # type: ignore[attr-defined]
    transport = FakeTransport(protocol)
    probe = RelayProbe(clock)
    probe.watch(protocol, transport, histogram)

    transport.read(b"a")
    assert histogram.observed == []
    probe.arm()
    probe.arm()  # arming twice still times one read
    transport.read(b"b")
    transport.read(b"c")
    assert histogram.observed == [pytest.approx(0.000_25)]
    assert protocol.data_received is direct  # type: ignore[attr-defined]
    assert splice.reads == [b"a", b"b", b"c"]

    transport.closing = True
    probe.arm()  # a closing transport is left alone
    assert protocol.data_received is direct  # type: ignore[attr-defined]
    transport.closing = False
    probe.arm()
    probe.disarm()
    transport.read(b"d")
    assert len(histogram.observed) == 1
    assert protocol.data_received is direct  # type: ignore[attr-defined]
