"""What one VAD turn costs voxgate, in CPU, with the real stores: per turn and per frame.

`python bench/turn_micro.py` starts a real voxgate app in this process (the ledger writer on
a real Postgres, live state on Redis, as `bench/run.py` gets them from `stores.py`), builds
`--sessions` real `FastRelay`s on its services with transports that only keep what is
written to them, and feeds them what a paced run feeds one voxgate: masked appends from
each client and OpenAI's events from upstream, one frame per `data_received`, with a full
server-VAD turn (`realtime_events.turn`: transcription with usage, a response with usage,
`rate_limits.updated`) every `--appends-per-turn` appends. Everything a turn starts (the
reservation, the settle, the ledger's durable commits that release the held events) runs
to completion before the next round. It prints the process's CPU (user + system, so the
stores' round trips count as they do in a run) per turn, per append and per round trip,
for a run with turns and one without (`--turns 0`), so that the difference is the turns'.

For an A/B, copy this file into another tree (e.g. a `git archive` of HEAD) and run both
copies in turn: each imports the tree it is in.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import realtime_events as rt  # the SDKs' append shapes, OpenAI's turn
from stores import setup_services, teardown_services
from targets import BENCH_TIERS

from gateway.app import create_app, drain
from gateway.ledger.writer import SessionStarted
from gateway.realtime.fastrelay.frames import apply_mask, build_frame
from gateway.realtime.fastrelay.relay import FastRelay
from gateway.server import start_server
from gateway.services import services_of
from gateway.session.effects import SessionEffects
from gateway.session.live import LiveSession
from gateway.settings import (
    AdminSettings,
    DatabaseSettings,
    EnforcementSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)
from gateway.tiers import parse_tiers_yaml
from policies.governor import SessionGovernor, SessionIdentity

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GcWatch:
    """Collections per generation and the time spent in them (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._since = 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._since = time.perf_counter()
            return
        took = time.perf_counter() - self._since
        self.count[info["generation"]] += 1
        self.seconds[info["generation"]] += took
        self.longest[info["generation"]] = max(self.longest[info["generation"]], took)


class KeepingTransport:
    """Stands in for a socket: keeps what is written to it until `take`."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out

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

    def set_protocol(self, protocol: Any) -> None:
        pass


def _text_messages(frames: list[bytes]) -> list[bytes]:
    """The payloads of the whole masked text frames voxgate wrote upstream (its own messages)."""
    messages = []
    for frame in frames:
        pos = 0
        while pos + 6 <= len(frame):
            length = frame[pos + 1] & 0x7F
            head = pos + 2
            if length == 126:
                length, head = int.from_bytes(frame[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                length, head = int.from_bytes(frame[pos + 2 : pos + 10], "big"), pos + 10
            mask, start = frame[head : head + 4], head + 4
            messages.append(apply_mask(frame[start : start + length], mask))
            pos = start + length
    return messages


class Session:
    def __init__(self, services: Any, tenant: str, policy: Any, n: int) -> None:
        now = time.time()
        sid = f"vgs_micro{os.getpid()}x{n}"
        identity = SessionIdentity(sid, tenant, "gpt-realtime", "realtime")
        governor = SessionGovernor(identity, services.prices, policy=policy, started_at=now)
        started = SessionStarted(sid, tenant, None, "websocket", "realtime", "gpt-realtime", None, "bench", now)
        shared = services.enforcement
        effects = SessionEffects(shared, tenant, sid, policy)
        self.live = LiveSession(governor, effects, started)
        self.client, self.upstream = KeepingTransport(), KeepingTransport()
        self.relay = FastRelay(self.live, self.client, self.upstream, max_message_bytes=1 << 20, on_done=lambda r: None)  # type: ignore[arg-type]
        self.relay.start()
        self.prefix = f"m{n}_"
        self.appends = 0
        self.turns = 0

    def open(self) -> None:
        self.relay.upstream_data(build_frame(1, rt.session_created("gpt-realtime"), masked=False))
        for message in _text_messages(self.upstream.take()):
            if b'"session.update"' in message[:40]:
                self.relay.upstream_data(build_frame(1, rt.session_updated("gpt-realtime", message), masked=False))

    def appends_frames(self, count: int) -> list[tuple[bytes, bytes]]:
        """The next `count` appends (each SDK's shape in turn) and the deltas upstream answers with."""
        shapes = list(rt.APPEND_SHAPES.values())
        frames = []
        for _ in range(count):
            self.appends += 1
            append = build_frame(1, shapes[self.appends % len(shapes)](self.appends), masked=True)
            frames.append((append, build_frame(1, rt.echo_delta(b"%d" % self.appends), masked=False)))
        return frames

    def turn_frames(self, audio_deltas: int) -> list[bytes]:
        self.turns += 1
        events = [rt.speech_started(f"item_u{self.prefix}{self.turns}", self.appends * 20)]
        events += rt.turn(self.prefix, self.turns, self.appends, audio_deltas)
        return [build_frame(1, e, masked=False) for e in events]


async def settle(sessions: list[Session], services: Any) -> None:
    """Let every effect a turn started finish: holds released, live state and the ledger idle."""
    await held(sessions)
    for s in sessions:
        await s.live.effects._queue.join()
    await services.ledger.drain(10)


async def held(sessions: list[Session]) -> None:
    """Wait (without spinning) until a held session is released, if any is held."""
    waiting = [s.relay._hold[0].durable for s in sessions if s.relay._hold is not None]
    if waiting:
        await asyncio.wait([w for w in waiting if w is not None], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0)


HOLDS: list[float] = []  # seconds from a held event's arrival to its ledger commit being seen


def _held_since(since: float) -> Any:
    return lambda _: HOLDS.append(time.perf_counter() - since)


async def workload(sessions: list[Session], services: Any, rounds: int, per_turn: int, turns: bool) -> float:
    """`rounds` rounds of `per_turn` appends per session, then (`turns`) a turn each; the CPU seconds
    it took (the frames are built before the clock starts)."""
    plan = [
        (
            {s: s.appends_frames(per_turn) for s in sessions},
            {s: s.turn_frames(rt_deltas) if turns else [] for s in sessions},
        )
        for _ in range(rounds)
    ]
    started = time.process_time()
    for appends, turn in plan:
        for i in range(per_turn):
            for s in sessions:
                append, delta = appends[s][i]
                s.relay.client_data(append)
                s.relay.upstream_data(delta)
            if i % 10 == 9:
                await asyncio.sleep(0)
        while any(turn.values()):
            fed = False
            for s in sessions:
                if turn[s] and s.relay._hold is None:
                    s.relay.upstream_data(turn[s].pop(0))
                    fed = True
                    if s.relay._hold is not None and s.relay._hold[0].durable is not None:
                        s.relay._hold[0].durable.add_done_callback(_held_since(time.perf_counter()))
            if fed:
                await asyncio.sleep(0)
            else:
                await held(sessions)
        await settle(sessions, services)
        for s in sessions:
            s.client.take()
            s.upstream.take()
    return time.process_time() - started


rt_deltas = 20


async def main_async(args: argparse.Namespace) -> None:
    global rt_deltas
    rt_deltas = args.audio_deltas
    with tempfile.TemporaryDirectory(prefix="voxgate-turn-micro-") as tmp:
        stores = await setup_services(Path(tmp))
        settings = Settings(
            server=ServerSettings(shutdown_grace_seconds=0.0),
            database=DatabaseSettings(url=stores.dsn, pool_max=5),
            redis=RedisSettings(url=stores.redis_url, key_prefix=stores.redis_prefix),
            upstream=UpstreamSettings(url="http://127.0.0.1:9/v1", api_key="sk-bench"),
            admin=AdminSettings(default_tier=None),
            enforcement=EnforcementSettings(calls_scan_seconds=0.0),
        )
        app = create_app(settings)
        gateway = await start_server(app, before_shutdown=lambda: drain(app), realtime_relay=True)
        try:
            services = services_of(app)
            policy = parse_tiers_yaml(BENCH_TIERS, "bench")["bench"]
            sessions = [Session(services, stores.tenant_id, policy, n) for n in range(args.sessions)]
            for s in sessions:
                services.ledger.submit(s.live.started)
                s.live.effects.start(s.live)
                s.open()
            await services.ledger.drain(10)
            await workload(sessions, services, 2, args.appends_per_turn, True)  # warm-up
            if args.profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                await workload(sessions, services, args.rounds, args.appends_per_turn, True)
                profiler.disable()
                stats = pstats.Stats(profiler).sort_stats(args.profile)
                stats.print_stats(45)
                return
            if args.gc_freeze:
                gc.freeze()
            HOLDS.clear()
            watch = GcWatch()
            rows = []
            for _ in range(args.repeat):
                with_turns = await workload(sessions, services, args.rounds, args.appends_per_turn, True)
                without = await workload(sessions, services, args.rounds, args.appends_per_turn, False)
                rows.append((with_turns, without))
            rows.sort(key=lambda r: r[0] - r[1])
            with_turns, without = rows[len(rows) // 2]
            n_turns = args.rounds * args.sessions
            n_rt = n_turns * args.appends_per_turn
            print(f"tree: {TREE}")
            print(f"turns: {n_turns} per run, {n_rt} append round trips; median of {args.repeat}")
            print(f"CPU per append round trip, no turns : {without / n_rt * 1e6:8.2f} us")
            print(f"CPU per append round trip, turns    : {with_turns / n_rt * 1e6:8.2f} us")
            print(f"CPU per turn (the difference)       : {(with_turns - without) / n_turns * 1e3:8.3f} ms")
            holds = sorted(HOLDS)
            if holds:
                print(
                    f"billing holds: {len(holds)}, wall ms median {holds[len(holds) // 2] * 1e3:.2f}"
                    f" p90 {holds[len(holds) * 9 // 10] * 1e3:.2f}"
                )
            runs = 2 * args.repeat * n_turns
            print(
                f"GC per turn (both runs): {[round(c / runs, 3) for c in watch.count]} collections by generation,"
                f" {sum(watch.seconds) / runs * 1e3:.3f} ms; longest {[round(t * 1e3, 2) for t in watch.longest]} ms;"
                f" {len(gc.get_objects())} objects tracked"
            )
        finally:
            await gateway.stop()
            await teardown_services(stores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="turns per session per run")
    parser.add_argument("--appends-per-turn", type=int, default=50)
    parser.add_argument("--audio-deltas", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the sessions are open")
    parser.add_argument("--profile", metavar="SORT", help="profile one run with turns (cProfile, sorted by SORT)")
    args = parser.parse_args()
    try:
        import uvloop  # what `voxgate serve` runs on
    except ImportError:  # pragma: no cover - only where uvloop is not installed
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
