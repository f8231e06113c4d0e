"""`/v1/realtime` reached through plain ASGI: an OpenAI-shaped refusal, never a relay.

The relay owns its sockets through uvicorn's WebSocket protocol class (docs/relay.md), so a
WebSocket upgrade only reaches the ASGI app when voxgate runs under a server that was not
configured by `gateway.server.uvicorn_config(realtime_relay=True)` (another ASGI server, or
uvicorn started by hand). Such a request is refused before the upgrade with a 501 that says
how to run voxgate; a plain HTTP request to the path is told to use a WebSocket.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError

WEBSOCKET_REQUIRED = GatewayError(
    400,
    "The Realtime API at this path is a WebSocket; for WebRTC use POST /v1/realtime/calls.",
    code="websocket_required",
)
RELAY_NOT_WIRED = GatewayError(
    501,
    "This server does not run voxgate's Realtime relay; start the gateway with `voxgate serve`.",
    code="relay_unavailable",
)


async def refuse_realtime(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app at `/v1/realtime`: refuse, with the HTTP status and body of the error."""
    error = RELAY_NOT_WIRED if scope["type"] == "websocket" else WEBSOCKET_REQUIRED
    headers = [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": error.body_bytes()})
        return
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": error.body_bytes()})
    else:  # the server cannot answer a WebSocket with HTTP: 1008 (policy violation) with the reason
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
