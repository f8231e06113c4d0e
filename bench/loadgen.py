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

The fake upstream answers each append with one `response.output_audio.delta` whose
`item_id` carries the append's `event_id`: a round trip is the time from writing the
append to reading that delta. Raw asyncio (uvloop when installed), minimal framing.

Protocol with the runner on stdout/stdin: prints `READY <connected>`, waits for a line on
stdin (any), runs, prints `DONE`, then `RESULT <json>`. `--no-wait` skips the stdin step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wsproto
from wsproto import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

PERIOD = 0.020
SLOTS = 10
AUDIO_B64 = ("AAAAAAEAAgADAP//" * 80).encode()
_APPEND_A = b'{"type": "input_audio_buffer.append", "event_id": "'
_APPEND_B = b'", "audio": "' + AUDIO_B64 + b'"}'
_RESPONSE_CREATE = b'{"type": "response.create", "response": {"output_modalities": ["audio"]}}'
_ITEM = b'"item_id": "item_'
now = time.perf_counter


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Stats:
    rtts: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    received_in_window: int = 0
    window_end: float = float("inf")
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    unmatched: int = 0
    start: float = 0.0
    timeline: list[int] = field(default_factory=lambda: [0] * 400)  # echoes per 0.5 s from the start

    def echo_at(self, t: float) -> None:
        i = int((t - self.start) * 2)
        if 0 <= i < 400:
            self.timeline[i] += 1

    def error(self, kind: str, detail: str | None = None) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None and detail:
            self.first_error = detail[:300]


class HandshakeError(Exception):
    pass


class Client(asyncio.Protocol):
    """One client session on a raw transport."""

    def __init__(self, stats: Stats, request: bytes, flatout: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.stats = stats
        self.request = request
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done_waiter: asyncio.Future[None] | None = None
        self.parser = wsproto.FrameParser()
        self.head = b""
        self.upgraded = False
        self.closing = False
        self.lost = False
        self.pending: dict[bytes, float] = {}
        self.seq = 0
        self.flatout = flatout
        self.running = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def send_append(self) -> None:
        self.seq += 1
        seq = b"%d" % self.seq
        body = b"".join((_APPEND_A, seq, _APPEND_B))
        self.pending[seq] = now()
        self.stats.sent += 1
        self.transport.write(wsproto.encode(OP_TEXT, body, True))  # type: ignore[union-attr]

    def send_text(self, body: bytes) -> None:
        self.transport.write(wsproto.encode(OP_TEXT, body, True))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.closing and not self.lost:
            self.closing = True
            self.transport.write(wsproto.encode(OP_CLOSE, wsproto.close_payload(1000), True))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.head[: self.head.find(b"\r\n")]
            rest = self.head[end + 4 :]
            if b" 101 " not in status_line:
                self.closing = True
                body = rest[:200].decode("utf-8", "replace")
                if not self.ready.done():
                    self.ready.set_exception(HandshakeError(f"{status_line.decode('latin-1')} {body}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            if not rest:
                return
            data = rest
        stats = self.stats
        for opcode, payload in self.parser.feed(data):
            if opcode == OP_TEXT:
                head = payload[:48]
                if b"response.output_audio.delta" in head:
                    t = now()
                    i = payload.find(_ITEM)
                    t0 = None
                    if i >= 0:
                        i += len(_ITEM)
                        t0 = self.pending.pop(payload[i : payload.find(b'"', i)], None)
                    if t0 is None:
                        stats.unmatched += 1
                        continue
                    stats.rtts.append(t - t0)
                    stats.received += 1
                    stats.echo_at(t)
                    if t <= stats.window_end:
                        stats.received_in_window += 1
                    if self.flatout and self.running:
                        self.send_append()
                elif b"session.created" in head:
                    if not self.ready.done():
                        self.ready.set_result(None)
                elif b"response.done" in head:
                    stats.received += 1
                    if self.done_waiter is not None and not self.done_waiter.done():
                        self.done_waiter.set_result(None)
                elif b'"error"' in head:
                    stats.error("error_event", payload[:300].decode("utf-8", "replace"))
            elif opcode == OP_PING:
                self.transport.write(wsproto.encode(OP_PONG, payload, True))  # type: ignore[union-attr]
            elif opcode == OP_CLOSE:
                if not self.closing:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    stats.error(f"closed_by_peer_{code}", payload[2:200].decode("utf-8", "replace"))
                    self.closing = True
                    self.transport.write(wsproto.encode(OP_CLOSE, payload[:2], True))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(HandshakeError(f"connection lost before session.created: {exc}"))
        elif not self.closing:
            self.stats.error("connection_dropped", f"connection dropped: {exc}")
        if self.done_waiter is not None and not self.done_waiter.done():
            self.done_waiter.set_exception(HandshakeError("connection lost"))


def build_request(url: str, api_key: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {wsproto.new_key().decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {api_key}\r\nUser-Agent: voxgate-bench\r\n\r\n"
    ).encode()
    return host, port, request


async def open_session(url: str, api_key: str, stats: Stats, flatout: bool, timeout: float) -> Client:
    host, port, request = build_request(url, api_key)
    loop = asyncio.get_running_loop()
    transport, client = await asyncio.wait_for(
        loop.create_connection(lambda: Client(stats, request, flatout), host, port), timeout
    )
    try:
        await asyncio.wait_for(client.ready, timeout)
    except BaseException:
        transport.close()
        raise
    return client


async def open_many(args: argparse.Namespace, stats: Stats, flatout: bool = False) -> tuple[list[Client], list[float]]:
    sem = asyncio.Semaphore(args.concurrency)
    clients: list[Client] = []
    latencies: list[float] = []

    async def one() -> None:
        async with sem:
            t0 = now()
            try:
                client = await open_session(args.url, args.api_key, stats, flatout, args.connect_timeout)
            except (OSError, TimeoutError, HandshakeError) as exc:
                stats.error("connect_failed", f"{type(exc).__name__}: {exc}")
                return
            latencies.append(now() - t0)
            clients.append(client)

    await asyncio.gather(*(one() for _ in range(args.sessions)))
    return clients, latencies


async def wait_go(args: argparse.Namespace, connected: int) -> None:
    print(f"READY {connected}", flush=True)
    if args.no_wait:
        return
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 60)


async def close_all(clients: list[Client]) -> None:
    for c in clients:
        c.close()
    deadline = now() + 1.0
    while now() < deadline and any(not c.lost for c in clients):  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.02)
    for c in clients:
        if c.transport is not None and not c.lost:
            c.transport.abort()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_stream(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    flatout = args.mode == "flatout"
    clients, latencies = await open_many(args, stats, flatout)
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


async def run_connect(args: argparse.Namespace) -> dict[str, object]:
    """N handshakes through to session.created, C at a time, then a close each."""
    stats = Stats()
    latencies: list[float] = []
    await wait_go(args, 0)
    deadline = now() + args.seconds
    remaining = args.count
    t0, cpu0 = now(), cpu_seconds()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and now() < deadline:
            remaining -= 1
            t = now()
            try:
                client = await open_session(args.url, args.api_key, stats, False, args.connect_timeout)
            except (OSError, TimeoutError, HandshakeError) as exc:
                stats.error("connect_failed", f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(now() - t)
            client.close()
            client.transport.close()  # type: ignore[union-attr]

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = now() - t0
    print("DONE", flush=True)
    return _latency_summary("connect", latencies, elapsed, stats, cpu0)


def _latency_summary(mode: str, latencies: list[float], elapsed: float, stats: Stats, cpu0: float) -> dict[str, object]:
    """The result of a run of independent requests (connects or HTTP GETs)."""
    return {
        "mode": mode,
        "ok": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": 1000 * (percentile(latencies, 0.5) or 0),
        "p99_ms": 1000 * (percentile(latencies, 0.99) or 0),
        "errors": stats.errors,
        "error_count": sum(stats.errors.values()),
        "first_error": stats.first_error,
        "loadgen_cpu_fraction": (cpu_seconds() - cpu0) / elapsed,
    }


async def run_http(args: argparse.Namespace) -> dict[str, object]:
    """N `GET <path>` (or `POST` with `--post-json`) requests, each on a new connection, C at a time."""
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if args.post_json is None:
        request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    else:
        body = args.post_json.encode()
        request = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Authorization: Bearer {args.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    stats = Stats()
    latencies: list[float] = []
    await wait_go(args, 0)
    deadline = now() + args.seconds
    remaining = args.count
    t0, cpu0 = now(), cpu_seconds()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and now() < deadline:
            remaining -= 1
            t = now()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), args.connect_timeout)
                writer.write(request)
                data = await asyncio.wait_for(reader.read(), args.connect_timeout)
                writer.close()
            except (OSError, TimeoutError) as exc:
                stats.error("request_failed", f"{type(exc).__name__}: {exc}")
                continue
            if not data.startswith(b"HTTP/1.1 200"):
                stats.error("bad_status", data[:100].decode("latin-1"))
                continue
            latencies.append(now() - t)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = now() - t0
    print("DONE", flush=True)
    return _latency_summary("http", latencies, elapsed, stats, cpu0)


async def run_idle(args: argparse.Namespace) -> dict[str, object]:
    stats = Stats()
    clients, latencies = await open_many(args, stats)
    await wait_go(args, len(clients))
    print("DONE", flush=True)
    await close_all(clients)
    return {
        "mode": "idle",
        "sessions": args.sessions,
        "connected": len(clients),
        "connect_p50_ms": 1000 * (percentile(latencies, 0.5) or 0),
        "errors": stats.errors,
        "error_count": sum(stats.errors.values()),
        "first_error": stats.first_error,
    }


async def run_ledger(args: argparse.Namespace) -> dict[str, object]:
    """`response.create` -> `response.done`, one at a time per session, `count` in all."""
    stats = Stats()
    clients, _ = await open_many(args, stats)
    await wait_go(args, len(clients))
    loop = asyncio.get_running_loop()
    deadline = now() + args.seconds
    remaining = args.count
    t0 = now()

    async def drive(client: Client) -> None:
        nonlocal remaining
        while remaining > 0 and now() < deadline and not client.lost:
            remaining -= 1
            client.done_waiter = loop.create_future()
            client.send_text(_RESPONSE_CREATE)
            try:
                await asyncio.wait_for(client.done_waiter, args.connect_timeout)
            except (TimeoutError, HandshakeError) as exc:
                stats.error("response_failed", f"{type(exc).__name__}: {exc}")
                return

    await asyncio.gather(*(drive(c) for c in clients))
    elapsed = now() - t0
    print("DONE", flush=True)
    await close_all(clients)
    return {
        "mode": "ledger",
        "connected": len(clients),
        "responses": stats.received,
        "seconds": elapsed,
        "per_second": stats.received / elapsed if elapsed else 0.0,
        "errors": stats.errors,
        "error_count": sum(stats.errors.values()),
        "first_error": stats.first_error,
    }


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
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1/realtime?model=gpt-realtime")
    p.add_argument("--api-key", default="sk-bench")
    p.add_argument("--mode", choices=sorted(MODES), default="paced")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (time bound for connect/http)")
    p.add_argument("--count", type=int, default=500, help="connect/http/ledger: how many in all")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--period-ms", type=float, default=PERIOD * 1000, help="paced: ms between appends per session")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to wait for outstanding echoes")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--p99-limit-ms", type=float, default=100.0, help="paced: p99 above this is 'not kept up'")
    p.add_argument("--no-wait", action="store_true", help="start at once instead of waiting for a stdin line")
    p.add_argument("--post-json", default=None, help="http: POST this JSON body (with the API key) instead of GET")
    args = p.parse_args(argv)
    host = urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        p.error("the load generator only targets loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = args.connect_timeout * 3 + args.seconds + args.grace + 90
    result = wsproto.run(asyncio.wait_for(MODES[args.mode](args), budget))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
