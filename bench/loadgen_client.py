"""The load generator's client side: one WebSocket session per `Client`, on a raw transport.

A `Client` sends audio appends in an SDK's shape and times each one's echo (the fake
upstream's delta whose `item_id` is `item_<n>` answers append n); `Stats` gathers what
every session saw. Raw asyncio, the small framer in `wsproto`; `wss://` with `_tls`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realtime_events as rt
import wsproto
from wsproto import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

PERIOD = 0.020
SLOTS = 10
_ITEM = b'"item_id":"item_'
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
    turn_deltas: int = 0  # audio deltas of the fake upstream's VAD turns (not round trips)
    responses_done: int = 0
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

    def __init__(
        self, stats: Stats, request: bytes, flatout: bool = False, shape: str = "python-sdk", update: bool = False
    ) -> None:
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
        self.make_append = rt.APPEND_SHAPES[shape]
        self.update = update  # send a session.update once session.created arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def send_append(self) -> None:
        self.seq += 1
        body = self.make_append(self.seq)
        self.pending[b"%d" % self.seq] = now()
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
                        item = payload[i : payload.find(b'"', i)]
                        if not item.isdigit():
                            stats.turn_deltas += 1
                            continue
                        t0 = self.pending.pop(item, None)
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
                    if self.update:
                        self.send_text(rt.SESSION_UPDATE)
                    if not self.ready.done():
                        self.ready.set_result(None)
                elif b"response.done" in head:
                    if self.done_waiter is not None:
                        stats.received += 1
                        if not self.done_waiter.done():
                            self.done_waiter.set_result(None)
                    else:
                        stats.responses_done += 1
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


_tls: list[ssl.SSLContext | None] = [None]  # set from --ca-file for wss:// targets


def build_request(url: str, api_key: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {wsproto.new_key().decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {api_key}\r\nUser-Agent: voxgate-bench\r\n\r\n"
    ).encode()
    return host, port, request


async def open_session(
    url: str, api_key: str, stats: Stats, flatout: bool, timeout: float, shape: str = "python-sdk", update: bool = False
) -> Client:
    host, port, request = build_request(url, api_key)
    loop = asyncio.get_running_loop()
    transport, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: Client(stats, request, flatout, shape, update),
            host,
            port,
            ssl=_tls[0] if url.startswith("wss:") else None,
            server_hostname=host if url.startswith("wss:") else None,
        ),
        timeout,
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

    shapes = args.shapes.split(",")
    order = iter(range(args.sessions))

    async def one() -> None:
        shape = shapes[next(order) % len(shapes)]
        async with sem:
            t0 = now()
            try:
                client = await open_session(
                    args.url, args.api_key, stats, flatout, args.connect_timeout, shape, args.session_update
                )
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
