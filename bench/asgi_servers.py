"""Side-by-side benchmark of uvicorn and granian serving the same Litestar app.

Run:  .venv/bin/python bench/asgi_servers.py            (about 55 s on 2 cores)

What it does, in one run:

1. HTTP: ``GET /ping`` -> small JSON body, N keep-alive connections for a fixed time.
   Load generator: raw asyncio streams (hand-written GET, Content-Length parsing).
2. WebSocket: Litestar echo of ~1.3 KB text frames (a 20 ms PCM16 24 kHz frame, base64, in a
   Realtime-style JSON envelope); N connections ping-pong for a fixed time.
   Load generator: the ``websockets`` asyncio client (no compression).
3. Capability checks against a raw-ASGI probe app, for both servers:
   - ``websocket.http.response`` denial extension (401 + JSON body before the upgrade);
   - pluggable WebSocket protocol class that receives the raw upgraded transport;
   - how ``Sec-WebSocket-Protocol: a, b`` is split into ``scope["subprotocols"]``;
   - whether the server keeps serving after an upgrade with a non-ASCII Sec-WebSocket-Protocol.

Each server is a subprocess (1 worker, uvloop when installed); its CPU time (process tree) is
read with psutil around the measured window. Both servers stay up for the whole run and the
phases are interleaved over several rounds (order alternating) and reported as medians, so
background load on a shared machine hits both alike; the CPU that other processes used in each
window is printed too. By default the server is pinned to CPU 0 and the
load generator to CPU 1 (``--no-pin`` to disable). Only 127.0.0.1 is contacted; every loop is
bounded in count and time, and every server is stopped at the end.

This module doubles as the app module the servers import (``asgi_servers:create_bench_app``,
``asgi_servers:create_probe_app``, ``asgi_servers:ProbeWSProtocol``); the benchmark code only
runs under ``__main__``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # loopback only, never anything else

# 20 ms of 24 kHz mono PCM16 = 960 bytes -> 1280 base64 chars, in a Realtime-style envelope.
_AUDIO_B64 = base64.b64encode(bytes(range(256)) * 3 + bytes(192)).decode()
WS_MESSAGE = json.dumps({"type": "input_audio_buffer.append", "audio": _AUDIO_B64}, separators=(",", ":"))

DENY_BODY = {"error": "unauthorized", "detail": "missing or invalid API key"}
MAX_SAMPLES_PER_CONN = 200_000  # hard cap on requests / round trips per connection per phase


# --------------------------------------------------------------------------------------------
# Server-side code (imported by the server subprocesses)
# --------------------------------------------------------------------------------------------


def create_bench_app() -> Any:
    """Trivial Litestar app: GET /ping (JSON) and a text WebSocket echo at /echo."""
    from litestar import Litestar, WebSocket, get, websocket
    from litestar.exceptions import WebSocketDisconnect

    @get("/ping", sync_to_thread=False)
    def ping() -> dict[str, str]:
        return {"status": "ok", "service": "voxgate-bench"}

    @websocket("/echo")
    async def echo(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        try:
            for _ in range(10_000_000):  # bounded; the client disconnects long before
                await socket.send_text(await socket.receive_text())
        except WebSocketDisconnect:
            return

    return Litestar(route_handlers=[ping, echo], openapi_config=None, debug=False, logging_config=None)


def create_probe_app() -> Any:
    """Raw ASGI app used by the capability checks (tests the server, not the framework)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            for _ in range(4):
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
            return
        if scope["type"] == "http":
            body = b'{"status":"ok"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "websocket":
            return
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        if scope["path"] == "/deny":
            if "websocket.http.response" in (scope.get("extensions") or {}):
                body = json.dumps(DENY_BODY).encode()
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] == "/subprotocols":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps(list(scope.get("subprotocols") or []))})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "websocket.close", "code": 1008})

    return app


class ProbeWSProtocol(asyncio.Protocol):
    """A WebSocket protocol class plugged into uvicorn via ``--ws asgi_servers:ProbeWSProtocol``.

    uvicorn hands it the raw transport and replays the upgrade request bytes into
    ``data_received``; it answers with a raw HTTP 418 whose JSON body reports what it saw.
    """

    def __init__(self, config: Any = None, server_state: Any = None, app_state: Any = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        self.answered = True
        t = self.transport
        body = json.dumps(
            {
                "protocol_class": f"{type(self).__module__}.{type(self).__qualname__}",
                "transport": f"{type(t).__module__}.{type(t).__qualname__}",
                "first_bytes_seen": data.split(b"\r\n", 1)[0].decode("latin-1"),
                "bytes_seen": len(data),
            }
        ).encode()
        head = (
            b"HTTP/1.1 418 I'm a teapot\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        t.write(head + body)
        t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


# --------------------------------------------------------------------------------------------
# Process management
# --------------------------------------------------------------------------------------------


def _have(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    pin_cpu: int | None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: Any = None

    def start(self, timeout: float = 20.0) -> None:
        fd, path = tempfile.mkstemp(prefix=f"asgi-bench-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(BENCH_DIR) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        pin = self.pin_cpu

        def _pre() -> None:
            if pin is not None:
                os.sched_setaffinity(0, {pin})

        self.proc = subprocess.Popen(
            self.argv,
            cwd=str(BENCH_DIR),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped by its pgid only
            preexec_fn=_pre,  # single-threaded parent; sets CPU affinity only
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early (rc={self.proc.returncode}):\n{self.log_tail()}")
            if self.ping_once():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer GET /ping within {timeout}s:\n{self.log_tail()}")

    def ping_once(self, path: str = "/ping", timeout: float = 1.0) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """user+system CPU of the server process and all its live descendants."""
        import psutil

        if self.proc is None:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def pids(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, n: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")


def uvicorn_argv(target: str, port: int, ws: str = "websockets-sansio") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--http",
        "httptools" if _have("httptools") else "h11",
        "--loop",
        "uvloop" if _have("uvloop") else "asyncio",
        "--ws",
        ws,
        "--ws-per-message-deflate",
        "false",
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "on",
    ]


def granian_argv(target: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop" if _have("uvloop") else "asyncio",
        "--log-level",
        "warning",
        "--no-access-log",
        target,
    ]


def make_server(name: str, target: str, pin: int | None, ws: str = "websockets-sansio") -> Server:
    port = _free_port()
    argv = uvicorn_argv(target, port, ws) if name == "uvicorn" else granian_argv(target, port)
    return Server(name=name, argv=argv, port=port, pin_cpu=pin)


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    count: int = 0
    errors: int = 0
    lat: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0  # busy CPU of the whole machine minus server and load generator

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.lat:
            return float("nan")
        s = sorted(self.lat)
        return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000.0

    @property
    def cpu_per_1k(self) -> float:
        return self.server_cpu / (self.count / 1000.0) if self.count else float("nan")


class Window:
    """Warm-up, then a measured window; CPU sampled at both edges."""

    def __init__(self, server: Server, warmup: float, duration: float) -> None:
        self.server = server
        now = time.perf_counter()
        self.t_start = now + warmup
        self.t_end = self.t_start + duration
        self.result = PhaseResult(seconds=duration)

    async def sample_cpu(self) -> None:
        import psutil

        def busy() -> float:
            t = psutil.cpu_times()
            return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))

        me = psutil.Process()
        await asyncio.sleep(max(0.0, self.t_start - time.perf_counter()))
        s0, c0, b0 = self.server.cpu_seconds(), sum(me.cpu_times()[:2]), busy()
        await asyncio.sleep(max(0.0, self.t_end - time.perf_counter()))
        s1, c1, b1 = self.server.cpu_seconds(), sum(me.cpu_times()[:2]), busy()
        self.result.server_cpu = s1 - s0
        self.result.client_cpu = c1 - c0
        self.result.other_cpu = max(0.0, (b1 - b0) - self.result.server_cpu - self.result.client_cpu)

    def record(self, started: float, finished: float) -> None:
        if started >= self.t_start and finished <= self.t_end:
            self.result.count += 1
            self.result.lat.append(finished - started)


async def _http_conn(port: int, win: Window) -> None:
    req = f"GET /ping HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: asgi-bench\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for _ in range(MAX_SAMPLES_PER_CONN):
            t0 = time.perf_counter()
            if t0 >= win.t_end:
                break
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                win.result.errors += 1
            clen = -1
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    clen = int(line[15:])
                    break
            if clen < 0:
                raise RuntimeError(f"no Content-Length in response head: {head!r}")
            body = await reader.readexactly(clen)
            if not body.startswith(b"{"):
                win.result.errors += 1
            win.record(t0, time.perf_counter())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _run_phase(
    server: Server,
    label: str,
    conn: Callable[[int, Window], Awaitable[None]],
    conns: int,
    warmup: float,
    duration: float,
) -> PhaseResult:
    """`conns` concurrent connections running `conn` for one measurement window."""
    win = Window(server, warmup, duration)
    cpu = asyncio.create_task(win.sample_cpu())
    results = await asyncio.wait_for(
        asyncio.gather(*(conn(server.port, win) for _ in range(conns)), return_exceptions=True),
        timeout=warmup + duration + 15,
    )
    await cpu
    win.result.errors += sum(1 for r in results if isinstance(r, BaseException))
    for r in results:
        if isinstance(r, BaseException):
            print(f"  [{server.name}] {label} connection error: {r!r}", file=sys.stderr)
            break
    return win.result


async def run_http(server: Server, conns: int, warmup: float, duration: float) -> PhaseResult:
    return await _run_phase(server, "http", _http_conn, conns, warmup, duration)


async def _ws_conn(port: int, win: Window) -> None:
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://{HOST}:{port}/echo", compression=None, ping_interval=None, max_size=2**20, open_timeout=10
    ) as ws:
        for _ in range(MAX_SAMPLES_PER_CONN):
            t0 = time.perf_counter()
            if t0 >= win.t_end:
                break
            await ws.send(WS_MESSAGE)
            reply = await ws.recv()
            if len(reply) != len(WS_MESSAGE):
                win.result.errors += 1
            win.record(t0, time.perf_counter())


async def run_ws(server: Server, conns: int, warmup: float, duration: float) -> PhaseResult:
    return await _run_phase(server, "ws", _ws_conn, conns, warmup, duration)


# --------------------------------------------------------------------------------------------
# Capability checks
# --------------------------------------------------------------------------------------------

_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


async def _raw_exchange(port: int, request: bytes, timeout: float = 3.0) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes; return (status line, headers, body). Reads at most 64 KiB."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            for _ in range(1024):
                size = int((await asyncio.wait_for(reader.readline(), timeout)).strip(), 16)
                if size == 0:
                    break
                body += await asyncio.wait_for(reader.readexactly(size + 2), timeout)
                body = body[:-2]
        elif lines[0].split(" ")[1:2] != ["101"]:
            with contextlib.suppress(asyncio.TimeoutError):
                body = await asyncio.wait_for(reader.read(65536), timeout)
        return lines[0], headers, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def check_denial(server: Server) -> dict[str, Any]:
    req = _UPGRADE.format(path="/deny", host=HOST, port=server.port, extra="").encode()
    try:
        status, headers, body = await _raw_exchange(server.port, req)
    except Exception as exc:
        return {"ok": False, "evidence": f"error: {exc!r}"}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    ok = status.split(" ")[1:2] == ["401"] and parsed == DENY_BODY
    return {
        "ok": ok,
        "evidence": f"`{status}`, "
        f"content-type `{headers.get('content-type')}`, body `{body.decode('utf-8', 'replace')}`",
    }


async def check_ws_class(name: str, pin: int | None) -> dict[str, Any]:
    if name != "uvicorn":
        import inspect

        from granian import Granian

        sig = inspect.signature(Granian.__init__).parameters
        params = [f"{p}: {sig[p].annotation}" for p in sig if "ws" in p or "websocket" in p]
        return {
            "ok": False,
            "evidence": (
                f"no option: `granian.Granian(...)` has only `{', '.join(params)}` for WebSockets "
                "(CLI `--ws/--no-ws`); the protocol is implemented in Rust (hyper + tokio-tungstenite)"
            ),
        }
    srv = make_server("uvicorn", "asgi_servers:create_probe_app", pin, ws="asgi_servers:ProbeWSProtocol")
    try:
        await asyncio.to_thread(srv.start)
        req = _UPGRADE.format(path="/anything", host=HOST, port=srv.port, extra="").encode()
        status, _headers, body = await _raw_exchange(srv.port, req)
        info = json.loads(body)
        ok = status.split(" ")[1:2] == ["418"] and info.get("protocol_class", "").endswith("ProbeWSProtocol")
        return {
            "ok": ok,
            "evidence": (
                f"`--ws asgi_servers:ProbeWSProtocol` -> `{status}`; class got transport "
                f"`{info.get('transport')}` and raw request `{info.get('first_bytes_seen')}` "
                f"({info.get('bytes_seen')} B)"
            ),
        }
    except Exception as exc:
        return {"ok": False, "evidence": f"error: {exc!r}"}
    finally:
        srv.stop()


async def check_subprotocols(server: Server) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    offered: list[Any] = ["realtime", "openai-beta.realtime-v1"]
    try:
        async with connect(
            f"ws://{HOST}:{server.port}/subprotocols", subprotocols=offered, open_timeout=3, compression=None
        ) as ws:
            seen = json.loads(await asyncio.wait_for(ws.recv(), 3))
    except Exception as exc:
        return {"ok": False, "evidence": f"error: {exc!r}"}
    return {"ok": seen == offered, "evidence": f"client offered `{', '.join(offered)}`; scope had `{seen}`"}


async def check_non_ascii_subprotocol(server: Server) -> dict[str, Any]:
    pids_before = server.pids()
    extra = "Sec-WebSocket-Protocol: caf\u00e9\r\n"
    req = _UPGRADE.format(path="/subprotocols", host=HOST, port=server.port, extra=extra).encode("utf-8")
    try:
        status, _h, _b = await _raw_exchange(server.port, req, timeout=2.0)
        answer = f"`{status}`"
    except Exception as exc:
        answer = f"connection closed with no HTTP response ({type(exc).__name__})"
    await asyncio.sleep(0.5)
    serving = await asyncio.to_thread(server.ping_once, "/", 2.0)
    pids_after = server.pids()
    return {
        "ok": serving,
        "evidence": (
            f"upgrade with UTF-8 `café` in Sec-WebSocket-Protocol -> {answer}; afterwards GET / "
            f"{'answered 200' if serving else 'got no 200'}; server pids {pids_before} -> {pids_after}"
        ),
    }


async def run_capabilities(pin: int | None) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("uvicorn", "granian"):
        res: dict[str, dict[str, Any]] = {}
        res["ws_class"] = await check_ws_class(name, pin)
        srv = make_server(name, "asgi_servers:create_probe_app", pin)
        try:
            await asyncio.to_thread(srv.start)
            res["denial"] = await check_denial(srv)
            res["subprotocols"] = await check_subprotocols(srv)
            res["non_ascii"] = await check_non_ascii_subprotocol(srv)  # last: it may kill the server
        except Exception as exc:
            res.setdefault("denial", {"ok": False, "evidence": f"server error: {exc!r}"})
        finally:
            srv.stop()
        out[name] = res
    return out


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a and a == a and b == b else "n/a"


def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:,.{digits}f}"


def perf_table(http: dict[str, list[PhaseResult]], ws: dict[str, list[PhaseResult]], args: argparse.Namespace) -> str:
    u, g = "uvicorn", "granian"
    rows: list[tuple[str, float, float, int]] = []
    dur = args.duration

    def add(label: str, fn: Any, digits: int, res: dict[str, list[PhaseResult]]) -> None:
        agg = sum if "errors" in label else statistics.median
        rows.append((label, agg(fn(r) for r in res[u]), agg(fn(r) for r in res[g]), digits))

    add(f"HTTP GET /ping req/s ({args.http_conns} conns)", lambda r: r.rate, 0, http)
    add("HTTP p50 latency ms", lambda r: r.pct(0.50), 2, http)
    add("HTTP p99 latency ms", lambda r: r.pct(0.99), 2, http)
    add("HTTP server CPU-s per 1k req", lambda r: r.cpu_per_1k, 4, http)
    add("HTTP server CPU util (% of 1 core)", lambda r: 100 * r.server_cpu / dur, 0, http)
    add("HTTP load-gen CPU util (% of 1 core)", lambda r: 100 * r.client_cpu / dur, 0, http)
    add("HTTP other processes' CPU (% of 1 core)", lambda r: 100 * r.other_cpu / dur, 0, http)
    add("HTTP errors", lambda r: r.errors, 0, http)
    add(f"WS echo round trips/s ({args.ws_conns} conns, {len(WS_MESSAGE)} B text)", lambda r: r.rate, 0, ws)
    add("WS p50 round trip ms", lambda r: r.pct(0.50), 2, ws)
    add("WS p99 round trip ms", lambda r: r.pct(0.99), 2, ws)
    add("WS server CPU-s per 1k round trips", lambda r: r.cpu_per_1k, 4, ws)
    add("WS server CPU util (% of 1 core)", lambda r: 100 * r.server_cpu / dur, 0, ws)
    add("WS load-gen CPU util (% of 1 core)", lambda r: 100 * r.client_cpu / dur, 0, ws)
    add("WS other processes' CPU (% of 1 core)", lambda r: 100 * r.other_cpu / dur, 0, ws)
    add("WS errors", lambda r: r.errors, 0, ws)
    lines = ["| metric | uvicorn | granian | granian / uvicorn |", "|---|---:|---:|---:|"]
    for label, a, b, d in rows:
        ratio = _ratio(a, b) if "errors" not in label and "%" not in label else ""
        lines.append(f"| {label} | {_fmt(a, d)} | {_fmt(b, d)} | {ratio} |")
    return "\n".join(lines)


def rounds_table(http: dict[str, list[PhaseResult]], ws: dict[str, list[PhaseResult]]) -> str:
    lines = [
        "| round | phase | server | rate /s | p99 ms | server CPU-s per 1k | other processes' CPU-s |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for phase, res in (("HTTP", http), ("WS", ws)):
        for i in range(len(res["uvicorn"])):
            for name in ("uvicorn", "granian"):
                r = res[name][i]
                lines.append(
                    f"| {i + 1} | {phase} | {name} | {_fmt(r.rate, 0)} | {_fmt(r.pct(0.99), 2)} | "
                    f"{_fmt(r.cpu_per_1k, 4)} | {_fmt(r.other_cpu, 2)} |"
                )
    return "\n".join(lines)


def caps_table(caps: dict[str, dict[str, dict[str, Any]]]) -> str:
    labels = {
        "denial": "`websocket.http.response` denial (401 + JSON body)",
        "ws_class": "pluggable WS protocol class gets raw upgraded transport",
        "subprotocols": "`Sec-WebSocket-Protocol: a, b` split into list",
        "non_ascii": "still serving after non-ASCII Sec-WebSocket-Protocol",
    }
    lines = ["| check | uvicorn | granian | evidence (uvicorn / granian) |", "|---|---|---|---|"]
    for key, label in labels.items():
        u = caps["uvicorn"].get(key, {"ok": False, "evidence": "not run"})
        g = caps["granian"].get(key, {"ok": False, "evidence": "not run"})
        yes = {True: "yes", False: "**no**"}
        lines.append(f"| {label} | {yes[u['ok']]} | {yes[g['ok']]} | {u['evidence']} / {g['evidence']} |")
    return "\n".join(lines)


def versions() -> str:
    out = []
    for pkg in ("uvicorn", "granian", "litestar", "websockets", "httptools", "uvloop", "h11", "psutil"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def bench_interleaved(
    args: argparse.Namespace, pin: int | None
) -> tuple[dict[str, list[PhaseResult]], dict[str, list[PhaseResult]]]:
    """Both servers stay up; rounds alternate which one goes first, so background load hits both alike."""
    names = ["uvicorn", "granian"]
    servers = {n: make_server(n, "asgi_servers:create_bench_app", pin) for n in names}
    http: dict[str, list[PhaseResult]] = {n: [] for n in names}
    ws: dict[str, list[PhaseResult]] = {n: [] for n in names}
    try:
        for srv in servers.values():
            await asyncio.to_thread(srv.start)
            print(f"- {srv.name} up on :{srv.port}, pids {srv.pids()}", file=sys.stderr, flush=True)
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for n in order:
                print(f"- round {rnd + 1}: {n} HTTP", file=sys.stderr, flush=True)
                http[n].append(await run_http(servers[n], args.http_conns, args.warmup, args.duration))
            for n in order:
                print(f"- round {rnd + 1}: {n} WS", file=sys.stderr, flush=True)
                ws[n].append(await run_ws(servers[n], args.ws_conns, args.warmup, args.duration))
            for srv in servers.values():
                if not srv.alive():
                    raise RuntimeError(f"{srv.name} died during the run:\n{srv.log_tail()}")
        return http, ws
    finally:
        for srv in servers.values():
            srv.stop()


async def amain(args: argparse.Namespace) -> int:
    pin_server: int | None = None
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        pin_server = cpus[0]
        os.sched_setaffinity(0, {cpus[1]})
    load0 = "/".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.monotonic()
    http, ws = await bench_interleaved(args, pin_server)
    caps = await run_capabilities(pin_server)
    elapsed = time.monotonic() - t0

    uv_http = "httptools" if _have("httptools") else "h11"
    loop = "uvloop" if _have("uvloop") else "asyncio"
    print(f"## ASGI server benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    print(
        f"- machine: nproc={os.cpu_count()}, {platform.machine()}, Linux {platform.release()}; "
        f"Python {platform.python_version()}; load average at start {load0}"
    )
    print(f"- versions: {versions()}")
    pin_txt = (
        f"server pinned to CPU {pin_server}, load generator to the other" if pin_server is not None else "no pinning"
    )
    print(
        f"- uvicorn: 1 worker, --http {uv_http}, --loop {loop}, --ws websockets-sansio, per-message-deflate off; "
        f"granian: --interface asgi, 1 worker, --loop {loop}, default runtime threads; {pin_txt}"
    )
    print(
        f"- {args.rounds} interleaved rounds (order alternates); each phase {args.warmup:g} s warm-up (discarded) "
        f"+ {args.duration:g} s measured; table = median over rounds; "
        f"load generator uses {'uvloop' if args.client_uvloop else 'asyncio'}; total wall time {elapsed:.1f} s\n"
    )
    print(perf_table(http, ws, args))
    print()
    print(rounds_table(http, ws))
    print(
        "\nRatios are granian / uvicorn: above 1 is better for req/s and round trips/s; "
        "below 1 is better for latency and CPU-s per 1k.\n"
    )
    print(caps_table(caps))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per phase (max 20)")
    ap.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase (max 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server and phase (max 10)")
    ap.add_argument("--http-conns", type=int, default=64)
    ap.add_argument("--ws-conns", type=int, default=50)
    ap.add_argument("--no-pin", action="store_true", help="do not pin server / load generator to separate CPUs")
    args = ap.parse_args()
    missing = [m for m in ("uvicorn", "granian", "litestar", "websockets", "psutil") if not _have(m)]
    if missing:
        print(f"missing: {', '.join(missing)}; install with: VIRTUAL_ENV=.venv uv pip install {' '.join(missing)}")
        return 2
    args.duration = min(max(args.duration, 0.5), 20.0)
    args.warmup = min(max(args.warmup, 0.0), 5.0)
    args.rounds = min(max(args.rounds, 1), 10)
    args.http_conns = min(max(args.http_conns, 1), 512)
    args.ws_conns = min(max(args.ws_conns, 1), 512)
    args.client_uvloop = _have("uvloop")
    if args.client_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(amain(args))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
