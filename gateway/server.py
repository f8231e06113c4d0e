"""Run an ASGI app on uvicorn inside the current event loop (gateway, emulator, tests, demo)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError
from gateway.realtime.fastrelay.handshake import head_too_large, refusal
from gateway.settings import ServerSettings

Lifespan = Literal["auto", "on", "off"]
log = logging.getLogger("voxgate.server")
# After refusing a head, how long the connection keeps draining a client that is still sending.
REFUSAL_LINGER_SECONDS = 1.0


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on reading a request head.

    A head (request line and headers) larger than `max_head_bytes` gets 431 and the connection
    closes, before the parser buffers more of it; a head not complete within
    `head_timeout_seconds` (counted from the connection, or from the first byte of a later
    keep-alive request) gets 408 and the connection closes; a connection that never sent a
    byte is just closed. WebSocket upgrades pass through here first, so the relay is covered.
    """

    max_head_bytes: ClassVar[int] = ServerSettings.max_header_bytes
    head_timeout_seconds: ClassVar[float] = ServerSettings.header_timeout_seconds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop, so the close is not a reset
        if not self._reading_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the limit allows; if that does not finish the head, it is too large.
        self._head_bytes = self.max_head_bytes
        if room > 0:
            super().data_received(data[:room])
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # refused as malformed, or upgraded (uvicorn drops bytes after an upgrade head)
        if self._reading_head:
            log.debug("refusing a request head over %d bytes from %s", self.max_head_bytes, self.client)
            self._refuse_head(head_too_large(self.max_head_bytes))
            return
        super().data_received(data[room:])

    def send_400_response(self, msg: str) -> None:
        """httptools could not parse the request (a bad request line, a control character in a
        header, conflicting or negative lengths): an OpenAI-shaped 400 instead of uvicorn's plain text."""
        log.debug("refusing a malformed request from %s: %s", self.client, msg)
        self._refuse_head(GatewayError(400, "The HTTP request is malformed.", code="invalid_request"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.head_timeout_seconds > 0:
            self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined head stalled behind a response: close after it
            return
        log.debug(
            "closing a connection from %s: no complete request head within %.1f s",
            self.client,
            self.head_timeout_seconds,
        )
        if self._head_bytes == 0 and self.cycle is None:
            self.transport.close()  # never spoke: nothing to answer
            return
        self._refuse_head(
            GatewayError(
                408,
                f"The request head was not received within {self.head_timeout_seconds:g} seconds.",
                code="request_timeout",
            )
        )

    def _refuse_head(self, error: GatewayError) -> None:
        """Answer `error` and close: half-close first, so a client still sending reads the answer
        instead of losing it to a reset (RFC 9112 section 9.6), then close after a short linger."""
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:  # never write into a response
            self.transport.close()
            return
        self.transport.write(refusal(error))
        self._refused = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._head_timer = self.loop.call_later(REFUSAL_LINGER_SECONDS, self.transport.close)


def head_limited_protocol(max_head_bytes: int, head_timeout_seconds: float) -> type[HeadLimitedProtocol]:
    """A `HeadLimitedProtocol` class with these bounds, for `uvicorn.Config(http=...)`."""
    return type(
        "VoxgateHttpProtocol",
        (HeadLimitedProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_seconds": head_timeout_seconds},
    )


def uvicorn_config(
    app: Any,
    *,
    ws_max_size: int,
    lifespan: Lifespan = "on",
    realtime_relay: bool = False,
    max_header_bytes: int = ServerSettings.max_header_bytes,
    header_timeout_seconds: float = ServerSettings.header_timeout_seconds,
    **extra: Any,
) -> uvicorn.Config:
    """The one uvicorn configuration voxgate uses everywhere.

    No permessage-deflate: audio is base64 and barely compresses, and the official SDKs
    do not ask for it; compression would only cost CPU per frame. With `realtime_relay`
    (voxgate's own app), WebSocket upgrades go to the frame-splicing relay bound to `app`
    (docs/relay.md); other apps (the emulator) keep uvicorn's WebSocket protocol. Request
    heads are bounded in size and time (`HeadLimitedProtocol`, docs/security.md).
    """
    ws: Any = "websockets-sansio"
    if realtime_relay:
        from gateway.realtime.fastrelay.protocol import realtime_protocol_class

        ws = realtime_protocol_class(app)
    return uvicorn.Config(
        app,
        http=head_limited_protocol(max_header_bytes, header_timeout_seconds),
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
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ws_max_size: int = 16 * 1024 * 1024,
    lifespan: Lifespan = "on",
    before_shutdown: Callable[[], Awaitable[None]] | None = None,
    realtime_relay: bool = False,
    max_header_bytes: int = ServerSettings.max_header_bytes,
    header_timeout_seconds: float = ServerSettings.header_timeout_seconds,
) -> RunningServer:
    """Start `app` on `host:port` and return once it accepts connections."""
    sock = bind_socket(host, port)
    config = uvicorn_config(
        app,
        ws_max_size=ws_max_size,
        lifespan=lifespan,
        realtime_relay=realtime_relay,
        max_header_bytes=max_header_bytes,
        header_timeout_seconds=header_timeout_seconds,
    )
    server = _InProcessServer(config, before_shutdown)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("server exited during startup")
        await asyncio.sleep(0.01)
    return RunningServer(server=server, task=task, host=host, port=sock.getsockname()[1])
