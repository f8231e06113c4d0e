"""The emulator's ASGI application (Litestar): the `/v1/realtime` socket and the HTTP endpoints."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from litestar import Litestar, asgi

from emulator.errors import http_error_body

WebSocketServer = Callable[[Any, Any, Any], Awaitable[None]]
REALTIME_PATH = "/v1/realtime"


async def send_json_error(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[str, str]], *, websocket: bool
) -> None:
    """An HTTP error answer; on a WebSocket scope, via the `websocket.http.response` extension."""
    prefix = "websocket.http.response" if websocket else "http.response"
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    await send({"type": f"{prefix}.start", "status": status, "headers": head})
    await send({"type": f"{prefix}.body", "body": raw, "more_body": False})


def create_app(serve_websocket: WebSocketServer, route_handlers: Sequence[Any] = ()) -> Litestar:
    """Build the app; `serve_websocket(scope, receive, send)` owns every `/v1/realtime` socket.

    `route_handlers` are the HTTP endpoints next to it (`emulator.calls`).
    """

    @asgi(REALTIME_PATH, copy_scope=True)
    async def realtime(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(scope, receive, send)
            return
        body = http_error_body(
            "Use a WebSocket upgrade on this path.", type="invalid_request_error", code="method_not_allowed"
        )
        await send_json_error(send, 405, body, [], websocket=False)

    return Litestar(route_handlers=[realtime, *route_handlers], openapi_config=None, logging_config=None, debug=False)
