"""Realtime-shaped load generator: S WebSocket sessions for T seconds, round trips measured.

Modes (all bounded in count and time, all stop by themselves):
- `paced`: every session sends a ~1.3 KB `input_audio_buffer.append` every 20 ms (real
  time: 20 ms of 24 kHz PCM16 is 960 bytes, 1280 base64 characters), spread evenly over
  the 20 ms period; late ticks are caught up, never skipped.
- `flatout`: every session sends its next append as soon as the echo of the last arrives.
- `connect`: N handshakes (to `session.created`) then close, C at a time: admission rate.
- `http`: N `GET` requests, a new connection each, C at a time (the trivial baseline);
  with `--post-json BODY`, N `POST`s of that body with the API key (`client_secrets`).
- `idle`: open S sessions and hold them until told to go (memory per idle session).
- `ledger`: S sessions send `response.create` and wait for `response.done`, N in all.

Appends are shaped as the official SDKs send them (`--shapes`, spread over the sessions;
`realtime_events.APPEND_SHAPES`), and each session sends a `session.update` after
`session.created`, as SDK clients do. The fake upstream answers append number n of a
connection with a `response.output_audio.delta` whose `item_id` is `item_<n>`: a round trip
is the time from writing the append to reading that delta. Deltas of the fake's VAD turns
(other item ids) are counted, not timed. Raw asyncio (uvloop when installed), minimal framing.

Protocol with the runner on stdout/stdin: prints `READY <connected>`, waits for a line on
stdin (any), runs, prints `DONE`, then `RESULT <json>`. `--no-wait` skips the stdin step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen_client
import realtime_events as rt
import wsproto
from loadgen_client import PERIOD, SLOTS, Stats, close_all, cpu_seconds, now, open_many, percentile, wait_go
from loadgen_requests import run_connect, run_http, run_idle, run_ledger


async def run_stream(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    flatout = args.mode == "flatout"
    clients, latencies = await open_many(args, stats, flatout)
    await asyncio.sleep(args.settle)  # what connecting set off (session rows, configuration) is done
    await wait_go(args, len(clients))
    cpu0, t0 = cpu_seconds(), now()
    start = t0 + 0.005
    end = start + args.seconds
    stats.window_end = end
    stats.start = start
    if flatout:
        for c in clients:
            c.running = True
            c.send_append()
        await asyncio.sleep(max(0.0, end - now()))
        for c in clients:
            c.running = False
    else:
        period = args.period_ms / 1000
        groups = [clients[k::SLOTS] for k in range(SLOTS)]
        tick = 0
        while True:
            base = start + tick * period
            if base >= end:
                break
            for k, group in enumerate(groups):
                offset = k * (period / SLOTS)
                due = base + offset
                if due >= end:
                    break
                delay = due - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                elapsed = min(now(), end) - start - offset
                should = int(elapsed / period) + 1
                for c in group:
                    if c.lost or c.closing:
                        continue
                    while c.seq < should:
                        c.send_append()
            tick += 1
    sent_window_end = now()
    deadline = sent_window_end + args.grace
    while now() < deadline and any(c.pending for c in clients if not c.lost):  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.01)
    drained = now()
    print("DONE", flush=True)
    cpu1 = cpu_seconds()
    lost_frames = sum(len(c.pending) for c in clients)
    await close_all(clients)
    rtts = stats.rtts
    target_rate = len(clients) / (args.period_ms / 1000) if not flatout else None
    rate = stats.received_in_window / args.seconds
    p99 = percentile(rtts, 0.99)
    result: dict[str, object] = {
        "mode": args.mode,
        "sessions": args.sessions,
        "connected": len(clients),
        "seconds": args.seconds,
        "sent": stats.sent,
        "received": stats.received,
        "received_in_window": stats.received_in_window,
        "undelivered": lost_frames,
        "delivered_fraction": stats.received / stats.sent if stats.sent else 0.0,
        "rate": rate,
        "target_rate": target_rate,
        "p50_ms": None if not rtts else 1000 * (percentile(rtts, 0.50) or 0),
        "p90_ms": None if not rtts else 1000 * (percentile(rtts, 0.90) or 0),
        "p99_ms": None if p99 is None else 1000 * p99,
        "max_ms": None if not rtts else 1000 * max(rtts),
        "connect_p50_ms": None if not latencies else 1000 * (percentile(latencies, 0.5) or 0),
        "turn_deltas": stats.turn_deltas,
        "responses_done": stats.responses_done,
        "shapes": args.shapes,
        "errors": stats.errors,
        "error_count": sum(stats.errors.values()) + stats.unmatched,
        "first_error": stats.first_error,
        "window_seconds": drained - t0,
        "echoes_per_half_second": stats.timeline[: int((drained - start) * 2) + 1],
        "loadgen_cpu_seconds": cpu1 - cpu0,
        "loadgen_cpu_fraction": (cpu1 - cpu0) / max(1e-9, drained - t0),
    }
    if not flatout:
        result["kept_up"] = bool(
            len(clients) == args.sessions
            and target_rate
            and rate >= 0.95 * target_rate
            and p99 is not None
            and p99 * 1000 < args.p99_limit_ms
        )
    return result


MODES = {
    "paced": run_stream,
    "flatout": run_stream,
    "connect": run_connect,
    "http": run_http,
    "idle": run_idle,
    "ledger": run_ledger,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="voxgate benchmark load generator (loopback only)")
    p.add_argument("--url", required=True, help="ws[s]://127.0.0.1:PORT/v1/realtime?model=gpt-realtime")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--mode", choices=sorted(MODES), default="paced")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (time bound for connect/http)")
    p.add_argument("--count", type=int, default=500, help="connect/http/ledger: how many in all")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--period-ms", type=float, default=PERIOD * 1000, help="paced: ms between appends per session")
    p.add_argument("--settle", type=float, default=1.0, help="paced/flatout: seconds between connecting and READY")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to wait for outstanding echoes")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--p99-limit-ms", type=float, default=100.0, help="paced: p99 above this is 'not kept up'")
    p.add_argument("--no-wait", action="store_true", help="start at once instead of waiting for a stdin line")
    p.add_argument(
        "--shapes",
        default=",".join(rt.APPEND_SHAPES),
        help="append shapes, spread round-robin over the sessions (realtime_events.APPEND_SHAPES)",
    )
    p.add_argument(
        "--session-update",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="paced/flatout: send a session.update after session.created, as SDK clients do",
    )
    p.add_argument("--ca-file", help="wss:// targets: trust this CA (PEM)")
    p.add_argument("--post-json", default=None, help="http: POST this JSON body (with the API key) instead of GET")
    args = p.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        p.error("the load generator only targets loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ca_file:
        loadgen_client._tls[0] = ssl.create_default_context(cafile=args.ca_file)
    budget = args.connect_timeout * 3 + args.seconds + args.grace + 90
    result = wsproto.run(asyncio.wait_for(MODES[args.mode](args), budget))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
