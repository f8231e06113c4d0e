"""`GET /v1/live/sessions` (WebSocket): GPT-Live, metered and policed, for `client.live.connect()`.

Admission runs before the upgrade, as for `/v1/realtime` (`gateway.session.admission.admit`
with `live=True`: key, start rate, concurrency lease, budget; a refusal is an OpenAI-shaped
HTTP error), then upstream's socket is opened with voxgate's key. The model arrives after the
upgrade in `session.start`, which the session's `LiveGovernor` polices (a refusal is an
`error` event and close 4010). `LiveCall` does the rest; this module owns the two sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qsl

from litestar import WebSocket, websocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.clock import SYSTEM_CLOCK
from gateway.errors import GatewayError, outage_refusal
from gateway.ledger.records import SessionStarted
from gateway.services import GatewayServices, find_services
from gateway.session.admission import Admission, abandon, admit
from gateway.session.live_call import LiveCall, LiveSides
from gateway.session.live_settings import LiveSettings, live_settings
from gateway.upstream import open_upstream
from policies.live.governor import LiveGovernor
from policies.live.meter import LiveIdentity

log = logging.getLogger("voxgate.live")
LIVE_PATH = "/v1/live/sessions"


def _no_query(query_string: bytes) -> None:
    """GPT-Live's WebSocket takes no query: the model and everything else are in `session.start`."""
    if query_string:
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        name = pairs[0][0][:64] if pairs else ""
        raise GatewayError(
            400,
            "GPT-Live's WebSocket takes no query parameters; configure the session in 'session.start'.",
            code="unknown_parameter",
            param=name or None,
        )


async def _refuse(socket: WebSocket[Any, Any, Any], error: GatewayError, services: GatewayServices | None) -> None:
    """An OpenAI-shaped HTTP answer instead of the upgrade (or 1008 where the server cannot send one)."""
    if services is not None:
        services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()
    with contextlib.suppress(Exception):
        if socket.connection_state == "init":
            await socket.receive()
        send: Any = socket.send  # raw ASGI events: the HTTP answer to an upgrade is an extension
        if "websocket.http.response" in (socket.scope.get("extensions") or {}):
            headers = [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
            await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": error.body_bytes()})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


@websocket(LIVE_PATH, operation_id="live_websocket", tags=["live"])
async def live_sessions(socket: WebSocket[Any, Any, Any]) -> None:
    """`GET /v1/live/sessions` WebSocket: OpenAI's GPT-Live, metered by the second per tenant (docs/live.md)."""
    services = find_services(socket)
    admission: Admission | None = None
    try:
        if services is None:
            raise GatewayError(503, "The gateway is starting; retry shortly.", code="gateway_starting", retry_after=1.0)
        _no_query(socket.scope.get("query_string", b""))
        admission = await admit(services, socket.scope["headers"], [], b"", live=True)
        upstream = await open_upstream(services.settings.upstream, {}, admission.safety_id, None, path="/live/sessions")
    except GatewayError as exc:
        await _abandon(services, admission)
        await _refuse(socket, exc, services)
        return
    except asyncio.CancelledError:
        await _abandon(services, admission)
        raise
    except Exception as exc:
        outage = outage_refusal(exc, SYSTEM_CLOCK if services is None else services.clock)
        if outage is None:
            log.exception("live admission failed")
        await _abandon(services, admission)
        await _refuse(
            socket, outage or GatewayError(500, "The gateway had an internal error.", code="internal_error"), services
        )
        return
    try:
        await socket.accept(headers=[(b"x-voxgate-session-id", admission.session_id.encode())])
    except Exception:
        await upstream.close()
        await _abandon(services, admission)
        return
    await _relay(services, admission, socket, upstream, live_settings(socket.app))


async def _abandon(services: GatewayServices | None, admission: Admission | None) -> None:
    if services is None or admission is None:
        return
    try:
        await abandon(services, admission)
    except Exception:
        log.exception("releasing an abandoned live admission failed")


async def _relay(
    services: GatewayServices,
    admission: Admission,
    socket: WebSocket[Any, Any, Any],
    upstream: ClientConnection,
    settings: LiveSettings,
) -> None:
    clock = services.clock
    now = clock.time()
    identity = admission.identity
    started = SessionStarted(
        session_id=admission.session_id,
        tenant_id=identity.tenant_id,
        api_key_id=identity.key_id,
        transport="websocket",
        intent="live",
        model=None,
        end_user_hash=admission.safety_id,
        gateway_instance=services.settings.server.instance_id,
        started_at=now,
        tags=admission.tags,
    )
    governor = LiveGovernor(
        LiveIdentity(admission.session_id, identity.tenant_id, "", "websocket"),
        services.prices,
        admission.policy,
        now,
        settings.limits,
    )
    sides = LiveSides(
        send_client=lambda text: _quietly(socket.send_text(text)),
        send_upstream=lambda text: _quietly(upstream.send(text)),
        close_client=lambda code, reason: _quietly(socket.close(code, reason)),
        close_upstream=lambda code, reason: _quietly(upstream.close(1000)),
    )
    call = LiveCall(services, governor, started, admission.policy, sides, leased=admission.leased, clock=clock)
    services.live.add(call)
    services.metrics.sessions_started.labels("websocket").inc()
    call.start()
    ticker = asyncio.create_task(call.run_ticks(), name=f"voxgate-live-tick-{call.session_id}")
    from_client = asyncio.create_task(_client_pump(socket, call), name=f"voxgate-live-client-{call.session_id}")
    from_upstream = asyncio.create_task(_upstream_pump(upstream, call), name=f"voxgate-live-up-{call.session_id}")
    closed = asyncio.create_task(call.closed.wait())
    reason = "gateway_error"
    try:
        await asyncio.wait({from_client, from_upstream, closed}, return_when=asyncio.FIRST_COMPLETED)
        if call.closed.is_set():
            reason = call.end_reason or "gateway_error"
        elif from_client.done():
            reason = "client_closed"
            await call.client_gone()
            # Read upstream until its `session.closed` (the final usage) or the wait runs out.
            wait = settings.limits.close_wait_s + 0.5
            with contextlib.suppress(TimeoutError):
                async with call.clock.timeout(wait):
                    await asyncio.shield(from_upstream)
        else:
            code = upstream.close_code
            reason = "upstream_closed" if code in (None, 1000, 1001) else "upstream_error"
            await _quietly(socket.close(code if code in (1000, 1001) else 1011, upstream.close_reason or ""))
    finally:
        for task in (ticker, from_client, from_upstream, closed):
            task.cancel()
        for task in (ticker, from_client, from_upstream, closed):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        call.end(reason)
        await _quietly(upstream.close())
        await call.aclose()
        services.live.discard(call)
        services.metrics.sessions_ended.labels(reason).inc()


async def _client_pump(socket: WebSocket[Any, Any, Any], call: LiveCall) -> None:
    while True:
        message = await socket.receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        await call.from_client(text if text is not None else message.get("bytes") or b"")


async def _upstream_pump(upstream: ClientConnection, call: LiveCall) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in upstream:
            await call.from_upstream(message)


async def _quietly(awaitable: Any) -> None:
    """Send or close on a socket that may already be gone: nothing left to tell it."""
    with contextlib.suppress(Exception):
        await awaitable
