"""The fast relay's connection to the upstream: TCP (+TLS), our own upgrade, then raw bytes.

Opened before the client's upgrade is answered, so every failure becomes the same
OpenAI-shaped `GatewayError` (`gateway.upstream.refusal_from_status`) before the upgrade.
After the 101 the protocol object stays in place and hands every byte to the relay.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.realtime.fastrelay.handshake import (
    HEAD_END,
    MAX_HEAD_BYTES,
    HandshakeError,
    UpstreamResponse,
    check_switching,
    new_client_key,
    parse_response,
    upgrade_request,
)
from gateway.settings import UpstreamSettings
from gateway.upstream import USER_AGENT, realtime_url, refusal_from_status, upstream_headers
from gateway.upstream_tls import client_context, unreachable

MAX_REFUSAL_BODY = 64 * 1024


class UpstreamSink(Protocol):
    """Who receives the upstream's bytes and events once the upgrade is done (the relay)."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamLink(asyncio.Protocol):
    """One upstream connection: handshake first, then a byte pipe into a sink."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.sink: UpstreamSink | None = None
        self._buf = bytearray()
        self._response: UpstreamResponse | None = None
        self._head_len = 0
        self._early: list[bytes] = []  # bytes after the 101, before a sink is attached
        self._lost: Exception | None = None
        self._is_lost = False
        self._paused = False
        self.answered: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport interface without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_data(data)
        elif self.answered.done():
            self._early.append(data)
        else:
            self._buf += data
            self._advance(eof=False)

    def eof_received(self) -> bool | None:
        if not self.answered.done():
            self._advance(eof=True)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_lost, self._lost = True, exc
        if not self.answered.done():
            self._advance(eof=True)
        if self.sink is not None:
            self.sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    def _advance(self, *, eof: bool) -> None:
        """Read the response head (and a refusal's body) as it arrives."""
        if self._response is None:
            end = self._buf.find(HEAD_END)
            if end < 0:
                if eof or len(self._buf) > MAX_HEAD_BYTES:
                    self.answered.set_exception(HandshakeError("no complete response head from upstream"))
                return
            try:
                self._response = parse_response(bytes(self._buf[:end]))
            except HandshakeError as exc:
                self.answered.set_exception(exc)
                return
            self._head_len = end + len(HEAD_END)
            if self._response.status == 101:
                rest = bytes(self._buf[self._head_len :])
                if rest:
                    self._early.append(rest)
                self._buf.clear()
                self.answered.set_result(self._response)
                return
        body_len = len(self._buf) - self._head_len
        wanted = self._response.content_length
        if eof or body_len >= min(wanted if wanted is not None else MAX_REFUSAL_BODY, MAX_REFUSAL_BODY):
            self.answered.set_result(self._response)

    @property
    def refusal_body(self) -> bytes:
        return bytes(self._buf[self._head_len : self._head_len + MAX_REFUSAL_BODY])

    def attach(self, sink: UpstreamSink) -> None:
        """Start delivering to `sink`, beginning with anything that came with the 101."""
        self.sink = sink
        if self.transport is not None:  # reads go straight to the sink (see protocol.py's upgrade)
            self.data_received = sink.upstream_data  # type: ignore[method-assign]
            self.transport.set_protocol(self)
        early, self._early = self._early, []
        for data in early:
            sink.upstream_data(data)
        if self._paused:
            sink.upstream_pause_writing()
        if self._is_lost:
            sink.upstream_lost(self._lost)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_upstream_link(
    settings: UpstreamSettings,
    query: Mapping[str, str],
    safety_id: str,
    beta: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> UpstreamLink:
    """Connect and upgrade, or raise the `GatewayError` the client should be given.
    `connect_timeout_seconds` runs on `clock` (the caller's `GatewayServices.clock`)."""
    url = urlsplit(realtime_url(settings.url, query))
    secure = url.scheme == "wss"
    host = url.hostname or "localhost"
    port = url.port or (443 if secure else 80)
    target = url.path + (f"?{url.query}" if url.query else "")
    headers = {**upstream_headers(settings, safety_id, beta), "User-Agent": USER_AGENT}
    key = new_client_key()
    loop = asyncio.get_running_loop()
    link: UpstreamLink | None = None
    try:
        async with clock.timeout(settings.connect_timeout_seconds):
            _, link = await loop.create_connection(
                lambda: UpstreamLink(key),
                host,
                port,
                # One context per process (gateway/upstream_tls.py): system trust plus VOXGATE_UPSTREAM_CA_FILE.
                ssl=client_context(settings) if secure else None,
                server_hostname=host if secure else None,
            )
            assert link.transport is not None
            link.transport.write(upgrade_request(url.netloc, target, key, headers))
            response = await link.answered
        if response.status != 101:
            raise refusal_from_status(response.status, response.headers, link.refusal_body)
        check_switching(response, key)
    except (GatewayError, asyncio.CancelledError):
        if link is not None:
            link.abort()
        raise
    except (OSError, HandshakeError, ssl.SSLError) as exc:  # TimeoutError is an OSError
        # A 503 `upstream_timeout` or a 502 `upstream_unreachable` whose message names the
        # cause (certificate, host name, refused, DNS…), logged and counted by it.
        if link is not None:
            link.abort()
        raise unreachable(exc) from None
    return link
