"""Raw ASGI helpers for endpoints that share one path between a WebSocket and HTTP methods.

Litestar gives an ASGI handler a path of its own, so `/v1/live/sessions` (GET upgrade and
POST) is served by one handler that reads the HTTP body and writes the answer itself.
"""

from __future__ import annotations

import json
from typing import Any

from emulator.errors import http_error_body

MAX_BODY_BYTES = 1024 * 1024


async def read_body(receive: Any) -> bytes:
    """The whole HTTP request body (capped at 1 MiB: more is the caller's mistake)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def send_http(
    send: Any, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None = None
) -> None:
    head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    head += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> None:
    await send_http(send, status, json.dumps(body).encode(), "application/json", headers)


async def send_http_error(send: Any, status: int, message: str, *, code: str | None, param: str | None = None) -> None:
    await send_json(send, status, http_error_body(message, type="invalid_request_error", code=code, param=param))


def parse_json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        value = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
