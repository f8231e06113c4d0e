"""The uvicorn WebSocket protocol class that hands `/v1/realtime` to the fast relay.

uvicorn parses the HTTP request; when it is a WebSocket upgrade it builds
`ws_protocol_class(config=, server_state=, app_state=)`, calls `connection_made(transport)`
with the raw transport and `data_received(<the request head>)`, then makes that object
the transport's protocol. `realtime_protocol_class(app)` returns such a class bound to the
voxgate Litestar app (whose lifespan holds the services). Upgrades to any other path are
handed, unchanged, to uvicorn's own `websockets-sansio` protocol. See docs/relay.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.clock import SYSTEM_CLOCK
from gateway.errors import GatewayError, outage_refusal
from gateway.realtime.fastrelay.handshake import (
    HEAD_END,
    MAX_HEAD_BYTES,
    HandshakeError,
    UpgradeRequest,
    client_error,
    head_too_large,
    parse_request,
    refusal,
    switching_protocols,
)
from gateway.realtime.fastrelay.relay import FastRelay
from gateway.realtime.fastrelay.upstream_client import UpstreamLink, open_upstream_link
from gateway.services import GatewayServices
from gateway.session.admission import Admission, abandon, admit, draining_error, session_plan
from gateway.session.assembly import assemble
from gateway.telemetry import NO_TRACE, SessionTrace, bind_session, start_session_trace
from gateway.telemetry.attributes import SPAN_ADMISSION, SPAN_UPSTREAM_CONNECT
from gateway.telemetry.relay_probe import RelayProbe

log = logging.getLogger("voxgate.fastrelay")

REALTIME_PATH = "/v1/realtime"
# What a client may send before the 101 (it should wait for it) that voxgate keeps in memory;
# past that the client is not read until its session starts.
EARLY_BYTES = 256 * 1024
# Translation sockets are an ASGI route of their own (gateway/translation), not a Realtime session.
TRANSLATIONS_PATH = "/v1/realtime/translations"


def is_realtime_path(path: str) -> bool:
    if path == TRANSLATIONS_PATH or path.startswith(TRANSLATIONS_PATH + "/"):
        return False
    return path == REALTIME_PATH or path.startswith(REALTIME_PATH + "/")


class RealtimeWebSocketProtocol(asyncio.Protocol):
    """One upgraded connection: the fast relay for `/v1/realtime`, uvicorn's protocol otherwise."""

    app: ClassVar[Any] = None  # the Litestar app; set by `realtime_protocol_class`

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], **_: Any) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._delegate: asyncio.Protocol | None = None
        self._relay: FastRelay | None = None
        self._admission: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._early_paused = False
        self._lost = False
        self._write_paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements the Transport interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.client_data(data)
        elif self._delegate is not None:
            self._delegate.data_received(data)
        elif self._admission is not None:
            self._keep_early(data)  # a client that did not wait for the 101
        else:
            self._read_head(data)

    def _keep_early(self, data: bytes) -> None:
        """Bytes sent before the 101 wait for the relay, up to `EARLY_BYTES`; past that the client is
        not read until the session starts (it waits in its socket, not in voxgate's memory)."""
        self._early.append(data)
        self._early_bytes += len(data)
        if self._early_bytes > EARLY_BYTES and not self._early_paused and self.transport is not None:
            self._early_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._delegate is not None:
            return self._delegate.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._early = []
        self.server_state.connections.discard(self)
        if self._relay is not None:
            self._relay.client_lost(exc)
        elif self._delegate is not None:
            self._delegate.connection_lost(exc)
        elif self._admission is not None:
            self._admission.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._relay is not None:
            self._relay.client_pause_writing()
        elif self._delegate is not None:
            self._delegate.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._relay is not None:
            self._relay.client_resume_writing()
        elif self._delegate is not None:
            self._delegate.resume_writing()

    # uvicorn's server calls this on every connection when it shuts down.
    def shutdown(self) -> None:
        if self._relay is not None:
            self._relay.shutdown(1001, "gateway shutting down", "gateway_shutdown")
        elif self._admission is not None:
            self._admission.cancel()
            self._refuse(draining_error())
        elif self.transport is not None and self._delegate is None:
            self.transport.close()

    # The upgrade
    def _read_head(self, data: bytes) -> None:
        assert self.transport is not None
        self._head += data
        end = self._head.find(HEAD_END)
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._refuse(head_too_large(MAX_HEAD_BYTES))
            return
        raw, self._head = self._head, b""
        try:
            request = parse_request(raw[:end])
        except HandshakeError:
            self._refuse(GatewayError(400, "Malformed upgrade request.", code="invalid_request"))
            return
        if not is_realtime_path(request.path):
            self._hand_to_uvicorn(raw)
            return
        if len(raw) > end + len(HEAD_END):
            self._keep_early(raw[end + len(HEAD_END) :])
        self._admission = asyncio.get_running_loop().create_task(self._upgrade(request))

    def _hand_to_uvicorn(self, raw: bytes) -> None:
        assert self.transport is not None
        delegate = WebSocketsSansIOProtocol(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        self.server_state.connections.discard(self)  # the delegate registers itself
        self._delegate = delegate
        delegate.connection_made(self.transport)
        delegate.data_received(raw)

    def _refuse(self, error: GatewayError, trace: SessionTrace = NO_TRACE) -> None:
        trace.refused(error.code or "none", error.status)
        services: GatewayServices | None = getattr(self.app.state, "services", None)
        if services is not None:
            services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()
        self._early = []
        if self.transport is not None and not self._lost and not self.transport.is_closing():
            self.transport.write(refusal(error))
            self.transport.close()

    async def _upgrade(self, request: UpgradeRequest) -> None:
        """Admit, open the upstream, answer 101 and start splicing; or refuse with HTTP."""
        assert self.transport is not None
        services: GatewayServices | None = getattr(self.app.state, "services", None)
        admission: Admission | None = None
        link: UpstreamLink | None = None
        trace = NO_TRACE if services is None else start_session_trace("websocket", services.clock)
        try:
            error = client_error(request)
            if error is not None:
                raise error
            if services is None:
                raise GatewayError(
                    503, "The gateway is starting; retry shortly.", code="gateway_starting", retry_after=1.0
                )
            admission = await self._admit(services, request, trace)
            link = await self._connect(services, admission, trace)
        except GatewayError as exc:
            await self._abandon(services, admission)
            self._refuse(exc, trace)
            return
        except asyncio.CancelledError:  # the client left, or the server is shutting down
            trace.refused("client_left", 499)
            if link is not None:
                link.abort()
            await self._abandon(services, admission)
            raise
        except Exception as exc:
            # Postgres or Redis unreachable: a retryable 503, not a bug
            outage = outage_refusal(exc, SYSTEM_CLOCK if services is None else services.clock)
            if outage is None:
                log.exception("admission failed")
            await self._abandon(services, admission)
            self._refuse(
                outage or GatewayError(500, "The gateway had an internal error.", code="internal_error"), trace
            )
            return
        if self._lost or link.transport is None:
            trace.refused("client_left", 499)
            link.abort()
            await self._abandon(services, admission)
            return
        live = assemble(services, session_plan(admission), services.clock, trace)
        limit = services.settings.server.max_message_bytes
        relay = FastRelay(
            live,
            self.transport,
            link.transport,
            max_message_bytes=limit,
            on_done=services.live.discard,
            abandon_wait_seconds=services.settings.server.abandon_wait_seconds,
            clock=services.clock,
        )
        services.live.add(relay)
        key = request.header(b"sec-websocket-key") or ""
        self.transport.write(
            switching_protocols(key, admission.subprotocol, [("x-voxgate-session-id", live.session_id)])
        )
        self._relay = relay
        # From now on every read goes straight to the relay: an instance attribute shadows
        # `data_received`, and `set_protocol` makes the transport look it up again (uvloop
        # caches the bound method; the stdlib loop looks it up on every read anyway).
        self.data_received = relay.client_data  # type: ignore[method-assign]
        self.transport.set_protocol(self)
        if self._early_paused:  # the relay decides about reading from here on (its opening holds the client)
            self._early_paused = False
            self.transport.resume_reading()
        relay.start()
        if self._write_paused:
            relay.client_pause_writing()
        early, self._early = self._early, []
        for data in early:
            relay.client_data(data)
        link.attach(relay)
        relay.probe = self._probe(services, link)

    async def _admit(self, services: GatewayServices, request: UpgradeRequest, trace: SessionTrace) -> Admission:
        """`admit`, timed (voxgate_admission_seconds) and traced; binds the session to this task's log lines."""
        clock = services.clock
        started, outcome = clock.monotonic(), "refused"
        try:
            with trace.step(SPAN_ADMISSION):
                admission = await admit(services, request.headers, request.subprotocols, request.query_string)
            outcome = "admitted"
        finally:
            services.metrics.admission.labels(outcome).observe(clock.monotonic() - started)
        tenant_id = admission.identity.tenant_id
        trace.admitted(admission.session_id, tenant_id, admission.model, admission.intent)
        bind_session(admission.session_id, tenant_id, trace)
        return admission

    @staticmethod
    async def _connect(services: GatewayServices, admission: Admission, trace: SessionTrace) -> UpstreamLink:
        """The upstream WebSocket, timed (voxgate_upstream_connect_seconds, successes) and traced."""
        started = services.clock.monotonic()
        with trace.step(SPAN_UPSTREAM_CONNECT):
            link = await open_upstream_link(
                services.settings.upstream, admission.query, admission.safety_id, admission.beta, services.clock
            )
        services.metrics.upstream_connect.labels("websocket").observe(services.clock.monotonic() - started)
        return link

    def _probe(self, services: GatewayServices, link: UpstreamLink) -> RelayProbe:
        """Both directions' reads, sampled for voxgate_relay_added_latency_seconds (gateway.telemetry.relay_probe)."""
        latency = services.metrics.relay_latency
        probe = RelayProbe(services.clock)
        probe.watch(self, self.transport, latency.labels("client_to_upstream"))
        probe.watch(link, link.transport, latency.labels("upstream_to_client"))
        return probe

    @staticmethod
    async def _abandon(services: GatewayServices | None, admission: Admission | None) -> None:
        """Give back what an admission reserved (a concurrency lease) when no session follows."""
        if services is None or admission is None:
            return
        try:
            await abandon(services, admission)
        except Exception:
            log.exception("releasing an abandoned admission failed")


def realtime_protocol_class(app: Any) -> type[asyncio.Protocol]:
    """A protocol class for `uvicorn.Config(ws=...)` bound to the voxgate app `app`."""
    return type("VoxgateRealtimeProtocol", (RealtimeWebSocketProtocol,), {"app": app})
