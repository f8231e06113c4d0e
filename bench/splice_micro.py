"""The fast relay's own Python cost per frame, in one process, without sockets.

`python bench/splice_micro.py` builds a real `FastRelay` around a real `LiveSession` and
`SessionGovernor` (the bench tier's policy: every check on), with transports that only
count what is written to them, and feeds it the benchmark's frames: masked
`input_audio_buffer.append` frames from the client in each shape the SDKs send
(`realtime_events.APPEND_SHAPES`) and OpenAI's `response.output_audio.delta` frames from
upstream, one frame per `data_received` as in a paced run. It prints the microseconds of
CPU per frame for each shape and direction and, for scale, the cost of the two calls
every relay makes per frame anyway (`bytes` slicing and a no-op method call), measured in
the same run. System calls are not in these numbers: `bench/run.py` measures the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.ledger.writer import SessionStarted
from gateway.livestate import MemoryLiveState
from gateway.realtime.fastrelay.frames import build_frame
from gateway.realtime.fastrelay.relay import FastRelay
from gateway.session.effects import SessionEffects
from gateway.session.enforcement import Enforcement
from gateway.session.live import LiveSession
from gateway.tiers import parse_tiers_yaml
from policies.governor import SessionGovernor, SessionIdentity
from policies.prices.builtin import DEFAULT_PRICE_TABLE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realtime_events as rt  # the SDKs' append shapes, OpenAI's delta
from targets import BENCH_TIERS  # the tier `make bench` gives voxgate: every check on


class CountingTransport:
    """Stands in for a socket: counts bytes written, nothing else."""

    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class ListLedger:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def submit(self, record: Any) -> None:
        self.records.append(record)

    def submit_durable(self, record: Any) -> asyncio.Future[None]:
        self.records.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def submit_end(self, record: Any) -> None:
        self.records.append(record)


def make_relay() -> tuple[FastRelay, CountingTransport, CountingTransport]:
    policy = parse_tiers_yaml(BENCH_TIERS, "bench")["bench"]
    now = time.time()
    identity = SessionIdentity("vgs_bench", "tenant", "gpt-realtime", "realtime")
    governor = SessionGovernor(identity, DEFAULT_PRICE_TABLE, policy=policy, started_at=now)
    started = SessionStarted("vgs_bench", "tenant", None, "websocket", "realtime", "gpt-realtime", None, "bench", now)
    shared = Enforcement(MemoryLiveState(), None, None, ListLedger(), DEFAULT_PRICE_TABLE, lambda: ())  # type: ignore[arg-type]
    effects = SessionEffects(shared, "tenant", "vgs_bench", policy)
    live = LiveSession(governor, effects, started)
    client, upstream = CountingTransport(), CountingTransport()
    relay = FastRelay(live, client, upstream, max_message_bytes=1 << 20, on_done=lambda r: None)  # type: ignore[arg-type]
    relay.start()
    return relay, client, upstream


def cpu() -> float:
    return time.process_time()


def per_frame(fn: Any, frames: list[bytes]) -> float:
    start = cpu()
    for frame in frames:
        fn(frame)
    return (cpu() - start) / len(frames) * 1e6


async def main(n: int, repeat: int) -> None:
    relay, client, upstream = make_relay()
    shapes = {name: [build_frame(1, make(i), masked=True) for i in range(n)] for name, make in rt.APPEND_SHAPES.items()}
    appends = [frame for i in range(n) for frame in (shapes[name][i] for name in shapes)][:n]
    deltas = [build_frame(1, rt.echo_delta(b"%d" % i), masked=False) for i in range(n)]

    class Null:
        def data_received(self, data: bytes) -> None:
            pass

    null = Null()
    rows = []
    for _ in range(repeat):
        rows.append(
            (
                per_frame(relay.client_data, appends),
                per_frame(relay.upstream_data, deltas),
                per_frame(null.data_received, appends),
                per_frame(lambda f: f[2:], appends),
            )
        )
    rows.sort()
    c, u, call, slc = rows[len(rows) // 2]
    if upstream.writes < n or client.writes < n:
        raise SystemExit("frames were not forwarded: the relay refused the benchmark's frames")
    for name, frames in shapes.items():
        print(
            f"  append as {name:20}: {min(per_frame(relay.client_data, frames) for _ in range(repeat)):6.2f} us/frame"
        )
    print(f"client append -> upstream : {c:6.2f} us/frame (the shapes above, in turn)")
    print(f"upstream delta -> client  : {u:6.2f} us/frame")
    print(f"round trip (both)         : {c + u:6.2f} us")
    print(f"baseline: a no-op method call {call:.2f} us, a bytes slice {slc:.2f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.frames, args.repeat))
