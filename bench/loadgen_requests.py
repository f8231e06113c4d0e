"""The load generator's request modes: connects, HTTP requests, idle sessions, responses.

Each is bounded in count and time, prints `DONE` when its measured part is over, and
returns the result the runner reads (`loadgen.py` prints it as `RESULT <json>`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import realtime_events as rt
from loadgen_client import (
    Client,
    HandshakeError,
    Stats,
    close_all,
    cpu_seconds,
    now,
    open_many,
    open_session,
    percentile,
    wait_go,
)


async def _repeat(
    args: argparse.Namespace, mode: str, stats: Stats, attempt: Callable[[], Awaitable[bool]]
) -> dict[str, object]:
    """`attempt()` `args.count` times (for at most `args.seconds`), `args.concurrency` at a
    time; the latencies of those that succeeded."""
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
            if await attempt():
                latencies.append(now() - t)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = now() - t0
    print("DONE", flush=True)
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


async def run_connect(args: argparse.Namespace) -> dict[str, object]:
    """N handshakes through to session.created, C at a time, then a close each."""
    stats = Stats()

    async def attempt() -> bool:
        try:
            client = await open_session(args.url, args.api_key, stats, False, args.connect_timeout)
        except (OSError, TimeoutError, HandshakeError) as exc:
            stats.error("connect_failed", f"{type(exc).__name__}: {exc}")
            return False
        client.close()
        client.transport.close()  # type: ignore[union-attr]
        return True

    return await _repeat(args, "connect", stats, attempt)


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

    async def attempt() -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), args.connect_timeout)
            writer.write(request)
            data = await asyncio.wait_for(reader.read(), args.connect_timeout)
            writer.close()
        except (OSError, TimeoutError) as exc:
            stats.error("request_failed", f"{type(exc).__name__}: {exc}")
            return False
        if not data.startswith(b"HTTP/1.1 200"):
            stats.error("bad_status", data[:100].decode("latin-1"))
            return False
        return True

    return await _repeat(args, "http", stats, attempt)


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
            client.send_text(rt.RESPONSE_CREATE)
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
