"""GPT-Live over WebSocket (`GET /v1/live/sessions`): voxgate against nginx and the plain relay, same run.

`python bench/live_ws.py [--quick]`. For every target (direct: load generator -> fake Live
upstream; nginx if installed; the plain `websockets` relay; voxgate with its whole policy
on) it starts a fresh fake upstream and relay, opens the paced sessions, and measures over a
window: the round trips (each `session.input_audio.append` answered by one
`session.output_audio.delta`, matched in order per session), the relay's CPU from /proc, and
the p50/p99 round trip. Repeats are interleaved and the median is reported; the "added"
latency of a relay is its p99 less the direct p99 of the same repeat round.

The shape is a Live call's: after `session.start` / `session.started`, audio appends of
`--period-ms` each (100 ms of PCM16 24 kHz, as the SDKs' microphone helpers send), and the
upstream's cumulative `session.usage.updated` every `--usage-seconds` (15 s, OpenAI's
cadence) per session, which voxgate meters into its ledger. Loopback only, plain ws://
upstream, every load bounded.

Internal modes: `live_ws.py upstream --port 0` (the fake Live upstream, prints LISTENING),
`live_ws.py loadgen --url … --sessions N --seconds S` (prints READY, waits for "go" on
stdin, prints DONE and RESULT <json>).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PY = sys.executable
MODEL = "gpt-live-1"
SAMPLE_RATE = 24_000
LIVE_PATH = "/v1/live/sessions"
DELTA_MARK = '"session.output_audio.delta"'
USAGE_MARK = '"session.usage.updated"'
APPEND_MARK = '"session.input_audio.append"'
SLOW_S = 0.050  # a round trip slower than this is counted by the second it ended in

# The bench tier of bench/targets.py with the Live model allowed: every check stays on, with
# limits a benchmark never reaches (the cost of checking is measured, not refusals).
LIVE_TIERS = """
tiers:
  bench:
    models: [gpt-live-1, gpt-realtime]
    voices: [marin, cedar]
    tools: []
    max_output_tokens: 4096
    max_session_tokens: 100000000
    max_session_seconds: 3600
    idle_timeout_seconds: 600
    max_concurrent_sessions: 100000
    session_starts_per_minute: 1000000
    budget: {daily_usd: 1000000, monthly_usd: 10000000, alert_at: [0.5, 0.8, 1.0], at_limit: finish_response}
"""


def pcm_chunk_b64(ms: int) -> str:
    """`ms` of a quiet PCM16 tone (not silence, so nothing downstream treats it as empty), base64."""
    samples = SAMPLE_RATE * ms // 1000
    raw = bytearray()
    for n in range(samples):
        value = 800 if (n // 24) % 2 else -800
        raw += value.to_bytes(2, "little", signed=True)
    return base64.b64encode(bytes(raw)).decode()


# --- the fake Live upstream ------------------------------------------------------------------


async def serve_upstream(port: int, usage_seconds: float, period_ms: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    delta = pcm_chunk_b64(period_ms)
    counter = itertools.count()

    def event(kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, "event_id": f"event_{next(counter)}", **fields})

    async def handler(ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            first = json.loads(await ws.recv())
            if first.get("type") != "session.start":
                await ws.close(1008, "session.start first")
                return
            model = (first.get("session") or {}).get("model") or MODEL
            resource = {
                "id": f"live_{secrets.token_hex(10)}",
                "expires_at": int(time.time()) + 3600,
                "model": model,
                "status": "active",
                "instructions": "",
                "audio": {"output": {"voice": "marin"}, "format": {"type": "audio/pcm", "rate": SAMPLE_RATE}},
                "delegation": None,
                "store": False,
            }
            started = loop.time()
            await ws.send(event("session.started", session=resource))
            # Sessions report at different moments, as real ones started at different times do.
            next_usage = started + usage_seconds * secrets.randbelow(1000) / 1000
            async for message in ws:
                if not isinstance(message, str):
                    continue
                if APPEND_MARK in message:
                    await ws.send(event("session.output_audio.delta", delta=delta))
                elif '"session.close"' in message:
                    usage = {"seconds": round(loop.time() - started, 3)}
                    await ws.send(event("session.closed", reason="close_requested", usage=usage, session=resource))
                    await ws.close()
                    return
                if loop.time() >= next_usage:
                    next_usage += usage_seconds
                    usage = {"seconds": round(loop.time() - started, 3)}
                    await ws.send(event("session.usage.updated", usage=usage, context_window={"usage_ratio": 0.0}))

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None) as server:
        print(f"LISTENING {next(iter(server.sockets)).getsockname()[1]}", flush=True)
        await stop


# --- the load generator ----------------------------------------------------------------------


class Session:
    def __init__(self) -> None:
        self.sent: deque[float] = deque()
        self.rtts: list[float] = []
        self.usage_events = 0
        self.ws: Any = None


async def run_loadgen(args: argparse.Namespace) -> None:
    import websockets

    loop = asyncio.get_running_loop()
    chunk = json.dumps({"type": "session.input_audio.append", "audio": pcm_chunk_b64(args.period_ms)})
    start = json.dumps({"type": "session.start", "session": {"model": MODEL}})
    headers = {"Authorization": f"Bearer {args.api_key}"}
    sessions = [Session() for _ in range(args.sessions)]
    errors: dict[str, int] = {}
    window = {"open": False, "start": 0.0, "end": float("inf")}
    slow: dict[int, int] = {}
    gate = asyncio.Semaphore(32)

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def connect(session: Session) -> None:
        async with gate:
            try:
                session.ws = await websockets.connect(
                    args.url, additional_headers=headers, compression=None, max_size=None, open_timeout=30
                )
                await session.ws.send(start)
                async with asyncio.timeout(30):
                    while '"session.started"' not in await session.ws.recv():
                        pass
            except Exception as exc:
                error(f"connect: {type(exc).__name__}")
                session.ws = None

    async def receive(session: Session) -> None:
        with contextlib.suppress(Exception):
            async for message in session.ws:
                now = time.perf_counter()
                if DELTA_MARK in message:
                    if session.sent:
                        sent = session.sent.popleft()
                        if window["open"] and now <= window["end"]:
                            session.rtts.append(now - sent)
                            if now - sent > SLOW_S:  # when slow round trips happen: a stall, or spread out
                                second = int(now - window["start"])
                                slow[second] = slow.get(second, 0) + 1
                elif USAGE_MARK in message:
                    session.usage_events += 1

    async def pace(session: Session, offset: float, until: float) -> None:
        period = args.period_ms / 1000
        tick = loop.time() + offset
        while tick < until:
            await asyncio.sleep(max(0.0, tick - loop.time()))
            session.sent.append(time.perf_counter())
            try:
                await session.ws.send(chunk)
            except Exception as exc:
                error(f"send: {type(exc).__name__}")
                return
            tick += period

    await asyncio.gather(*(connect(s) for s in sessions))
    live = [s for s in sessions if s.ws is not None]
    receivers = [asyncio.create_task(receive(s)) for s in live]
    print(f"READY {len(live)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    ramp = args.period_ms / 1000
    # Warm up for one usage interval's fraction, then the measured window.
    t_go = loop.time()
    measure_from = t_go + args.warmup
    until = measure_from + args.seconds
    pacers = [asyncio.create_task(pace(s, ramp * i / max(1, len(live)), until)) for i, s in enumerate(live)]
    await asyncio.sleep(max(0.0, measure_from - loop.time()))
    window["start"] = time.perf_counter()
    window["open"], window["end"] = True, window["start"] + args.seconds
    await asyncio.sleep(max(0.0, until - loop.time()))
    print("DONE", flush=True)
    await asyncio.gather(*pacers)
    await asyncio.sleep(args.grace)
    cpu1 = time.process_time()
    with contextlib.suppress(Exception):
        await asyncio.gather(*(s.ws.close() for s in live), return_exceptions=True)
    for task in receivers:
        task.cancel()
    rtts = sorted(r for s in live for r in s.rtts)
    expected = len(live) * args.seconds * 1000 / args.period_ms
    result = {
        "connected": len(live),
        "round_trips": len(rtts),
        "expected_round_trips": round(expected),
        "p50_ms": 1000 * rtts[len(rtts) // 2] if rtts else None,
        "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] if rtts else None,
        "usage_events": sum(s.usage_events for s in live),
        "unanswered": sum(len(s.sent) for s in live),
        "errors": errors,
        "loadgen_cpu_seconds": cpu1 - cpu0,
        "slow_by_second": dict(sorted(slow.items())),  # round trips over SLOW_S, by second of the window
    }
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver ------------------------------------------------------------------------------


def measure(bench: Any, target: Any, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    from procs import BENCH, cpu_times, proc_tree, read_line, start_listening, stop

    upstream_cmd = [PY, str(BENCH / "live_ws.py"), "upstream", "--port", "0"]
    upstream_cmd += ["--usage-seconds", str(args.usage_seconds), "--period-ms", str(args.period_ms)]
    if target.kind == "voxgate":  # the tree may have gained a migration since the run began
        from gateway.storage.migrations import apply_migrations

        asyncio.run(apply_migrations(bench.services.dsn))
    upstream, up_port = start_listening(upstream_cmd, logs / "live_upstream.log")
    relay = None
    try:
        relay, port = bench._start_relay(target, "plain", up_port)
        url = f"ws://127.0.0.1:{port}{LIVE_PATH}"
        cmd = [PY, str(BENCH / "live_ws.py"), "loadgen", "--url", url, "--api-key", bench.services.api_key]
        cmd += ["--sessions", str(args.sessions), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
        cmd += ["--period-ms", str(args.period_ms), "--grace", "2"]
        pids = proc_tree(relay.pid) if relay is not None else []
        deadline = time.monotonic() + args.seconds + args.warmup + 180
        with open(logs / "live_loadgen.log", "a") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        snap: dict[str, Any] = {}
        result: dict[str, Any] | None = None
        try:
            while (line := read_line(proc, deadline)) is not None:
                if line.startswith("READY"):
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    time.sleep(args.warmup)
                    snap["cpu0"], snap["t0"] = cpu_times(pids), time.monotonic()
                elif line.startswith("DONE"):
                    snap["cpu1"], snap["t1"] = cpu_times(pids), time.monotonic()
                elif line.startswith("RESULT "):
                    result = json.loads(line[7:])
                    break
        finally:
            stop(proc, signal.SIGTERM, 10)
        if result is None:
            raise RuntimeError(f"the load generator gave no result; see {logs / 'live_loadgen.log'}")
        if pids and "cpu1" in snap:
            cpu = sum(snap["cpu1"]) - sum(snap["cpu0"])
            result["relay_cpu_seconds"] = cpu
            result["relay_cpu_fraction"] = cpu / (snap["t1"] - snap["t0"])
            trips = result["round_trips"] or 0
            result["cpu_us_per_round_trip"] = 1e6 * cpu / trips if trips else None
        return result
    finally:
        stop(relay, signal.SIGTERM, 15)
        stop(upstream)


async def duration_rows(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM duration_usage WHERE kind = 'live_voice'"))
    finally:
        await conn.close()


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def drive(args: argparse.Namespace) -> int:
    from procs import ROOT, log, wait_quiet
    from stores import setup_services, teardown_services
    from targets import Bench, Target, nginx_binary
    from tls import make_ca_and_server_cert

    sys.path.insert(0, str(ROOT))
    targets = [Target("direct", "direct")]
    notes: list[str] = []
    if nginx_binary() and not args.no_nginx:
        targets.append(Target("nginx", "nginx"))
    else:
        notes.append("nginx not measured")
    targets += [Target("plain websockets relay", "plain"), Target("voxgate", "voxgate")]
    if args.targets:  # direct stays: it is the baseline of the added latency
        wanted = [w.strip() for w in args.targets.split(",") if w.strip()]
        targets = [t for t in targets if t.kind == "direct" or any(w in t.name for w in wanted)]
    tmp = Path(tempfile.mkdtemp(prefix="voxgate-live-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    services = asyncio.run(setup_services(tmp))
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    rounds: list[dict[str, dict[str, Any]]] = []
    t_start = time.monotonic()
    try:
        bench = Bench(argparse.Namespace(source=None), tmp, services, make_ca_and_server_cert(tmp / "tls"))
        bench.tiers_file.write_text(LIVE_TIERS)  # the Live model allowed; the rest of the bench tier as is
        for repeat in range(args.repeat):
            this_round: dict[str, dict[str, Any]] = {}
            for target in targets:
                busy = wait_quiet(args.quiet_limit, args.quiet_wait)
                if busy > args.quiet_limit:
                    log(f"  machine busy with other work ({100 * busy:.0f}% of a core); measuring anyway")
                log(f"run {repeat + 1}/{args.repeat}: {target.name}, {args.sessions} sessions x {args.seconds:g} s")
                try:
                    result = measure(bench, target, args, logs)
                except RuntimeError as exc:
                    notes.append(f"{target.name} run {repeat + 1}: {exc}")
                    log(f"  failed: {exc}")
                    continue
                if target.kind == "voxgate":  # what voxgate metered: its ledger's time-billed rows so far
                    result["ledger_rows"] = asyncio.run(duration_rows(services.dsn))
                runs[target.name].append(result)
                this_round[target.name] = result
                log(
                    f"  -> {result['round_trips']:,} round trips, p50 {result['p50_ms'] or 0:.2f} ms, "
                    f"p99 {result['p99_ms'] or 0:.2f} ms, relay cpu/rt "
                    f"{result.get('cpu_us_per_round_trip') or 0:.0f} us, usage events {result['usage_events']}, "
                    f"errors {result['errors']}, round trips > 50 ms by second {result['slow_by_second']}"
                )
            rounds.append(this_round)
    finally:
        asyncio.run(teardown_services(services))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for target in targets:
        r = runs[target.name]
        added = [
            rnd[target.name]["p99_ms"] - rnd["direct"]["p99_ms"]
            for rnd in rounds
            if target.name in rnd and "direct" in rnd and rnd[target.name].get("p99_ms") and rnd["direct"].get("p99_ms")
        ]
        rows.append(
            {
                "target": target.name,
                "runs": len(r),
                "connected": median_of(r, "connected"),
                "round_trips": median_of(r, "round_trips"),
                "expected_round_trips": median_of(r, "expected_round_trips"),
                "p50_ms": median_of(r, "p50_ms"),
                "p99_ms": median_of(r, "p99_ms"),
                "added_p99_ms": statistics.median(added) if added and target.name != "direct" else None,
                "cpu_us_per_round_trip": median_of(r, "cpu_us_per_round_trip"),
                "relay_cpu_fraction": median_of(r, "relay_cpu_fraction"),
                "usage_events": median_of(r, "usage_events"),
                "ledger_rows": r[-1].get("ledger_rows") if r else None,
                "errors": [x["errors"] for x in r if x["errors"]],
            }
        )
    report = {
        "meta": {
            "command": " ".join(["python bench/live_ws.py", *sys.argv[1:]]),
            "sessions": args.sessions,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "period_ms": args.period_ms,
            "usage_seconds": args.usage_seconds,
            "repeat": args.repeat,
            "cores": os.cpu_count(),
            "wall_seconds": round(time.monotonic() - t_start, 1),
            "notes": notes,
        },
        "rows": rows,
    }
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = [
        f"GPT-Live WebSocket, {meta['sessions']} paced sessions, appends every {meta['period_ms']} ms, usage every "
        f"{meta['usage_seconds']:g} s, {meta['seconds']:g} s windows, median of {meta['repeat']} "
        f"({meta['wall_seconds']:g} s in all)",
        "",
        "| target | connected | round trips (expected) | p50 ms | p99 ms | added p99 ms | relay CPU µs / round trip "
        "| relay CPU (cores) | usage events |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for row in report["rows"]:
        out.append(
            f"| {row['target']} | {f(row['connected'], '.0f')} | {f(row['round_trips'], ',.0f')} "
            f"({f(row['expected_round_trips'], ',.0f')}) | {f(row['p50_ms'], '.2f')} | {f(row['p99_ms'], '.2f')} "
            f"| {f(row['added_p99_ms'], '.2f')} | {f(row['cpu_us_per_round_trip'], '.0f')} "
            f"| {f(row['relay_cpu_fraction'], '.2f')} | {f(row['usage_events'], '.0f')} |"
        )
    for row in report["rows"]:
        if row.get("ledger_rows") is not None:
            out.append(f"- {row['target']}: {row['ledger_rows']} `duration_usage` rows (live_voice) booked by the end")
        if row["errors"]:
            out.append(f"- {row['target']} errors: {row['errors']}")
    out += [f"- {note}" for note in meta["notes"]]
    return "\n".join(out)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, default=0)
    up.add_argument("--usage-seconds", type=float, default=15.0)
    up.add_argument("--period-ms", type=int, default=100)
    lg = sub.add_parser("loadgen")
    lg.add_argument("--url", required=True)
    lg.add_argument("--api-key", required=True)
    lg.add_argument("--sessions", type=int, default=200)
    lg.add_argument("--seconds", type=float, default=30.0)
    lg.add_argument("--warmup", type=float, default=2.0)
    lg.add_argument("--period-ms", type=int, default=100)
    lg.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="~2 minutes: one run per target, 16 s windows")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, help="measured window per run (default 45; --quick 16)")
    parser.add_argument("--warmup", type=float, default=2.0, help="paced traffic before the window opens")
    parser.add_argument("--repeat", type=int, help="runs per target, interleaved; the median is shown (default 3)")
    parser.add_argument("--period-ms", type=int, default=100, help="audio per append, and the pace")
    parser.add_argument("--usage-seconds", type=float, default=15.0, help="upstream usage cadence per session")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--targets", help="only these targets (substrings of their names) besides direct")
    parser.add_argument("--quiet-limit", type=float, default=0.25, help="wait until other work uses < this many cores")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="... at most this long per run")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    if args.mode is None:
        args.repeat = args.repeat or (1 if args.quick else 3)
        args.seconds = args.seconds or (16.0 if args.quick else 45.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    if args.mode == "upstream":
        runner(serve_upstream(args.port, args.usage_seconds, args.period_ms))
        return 0
    if args.mode == "loadgen":
        runner(run_loadgen(args))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
