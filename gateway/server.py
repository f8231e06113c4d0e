"""Run an ASGI app on uvicorn inside the current event loop (gateway, emulator, tests, demo)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn

Lifespan = Literal["auto", "on", "off"]


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(
    app: Any, *, ws_max_size: int, lifespan: Lifespan = "on", relay: str = "asgi", **extra: Any
) -> uvicorn.Config:
    """The one uvicorn configuration voxgate uses everywhere.

    No permessage-deflate: audio is base64 and barely compresses, and the official SDKs
    do not ask for it; compression would only cost CPU per frame. With `relay="fast"`,
    WebSocket upgrades go to the frame-splicing relay bound to `app` (docs/relay.md).
    """
    ws: Any = "websockets-sansio"
    if relay == "fast":
        from gateway.fastrelay.protocol import realtime_protocol_class

        ws = realtime_protocol_class(app)
    return uvicorn.Config(
        app,
        ws=ws,
        ws_per_message_deflate=False,
        ws_max_size=ws_max_size,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        **extra,
    )


@dataclass
class RunningServer:
    """A uvicorn server started in this loop; `stop()` shuts it down gracefully."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class VoxgateServer(uvicorn.Server):
    """uvicorn, plus a drain step before it closes connections.

    uvicorn's own shutdown closes every WebSocket at once; voxgate first stops admitting
    sessions and lets live ones end (or ends them itself with a documented close code),
    so each session row records why it ended.
    """

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]] | None = None):
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.before_shutdown is not None:
            try:
                await self.before_shutdown()
            except Exception:
                logging.getLogger("voxgate.server").exception("drain before shutdown failed")
        await super().shutdown(sockets)


class _InProcessServer(VoxgateServer):
    # Signals belong to whoever owns the process (the CLI), not to an embedded server.
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def start_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, ws_max_size: int = 16 * 1024 * 1024,
    lifespan: Lifespan = "on", before_shutdown: Callable[[], Awaitable[None]] | None = None, relay: str = "asgi",
) -> RunningServer:
    """Start `app` on `host:port` and return once it accepts connections."""
    sock = bind_socket(host, port)
    config = uvicorn_config(app, ws_max_size=ws_max_size, lifespan=lifespan, relay=relay)
    server = _InProcessServer(config, before_shutdown)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("server exited during startup")
        await asyncio.sleep(0.01)
    return RunningServer(server=server, task=task, host=host, port=sock.getsockname()[1])
