"""The emulator's plain-HTTP endpoints' plumbing: reading keys and forms, writing OpenAI-shaped JSON replies."""

from __future__ import annotations

import json
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from litestar import Request, Response

from emulator.errors import http_error_body
from emulator.handshake import KEY_SUBPROTOCOL_PREFIX, Refusal


def request_headers_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def bearer_key(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    return next((p[len(KEY_SUBPROTOCOL_PREFIX) :] for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)), None)


def json_response(status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> Response[bytes]:
    return Response(
        json.dumps(body).encode(), status_code=status, media_type="application/json", headers=dict(headers or [])
    )


def http_error(status: int, message: str, *, code: str | None, param: str | None = None) -> Response[bytes]:
    kind = "invalid_request_error"
    return json_response(status, http_error_body(message, type=kind, code=code, param=param))


def refusal_response(refusal: Refusal) -> Response[bytes]:
    return json_response(refusal.status, refusal.body, refusal.headers)


def multipart_parts(content_type: str, body: bytes) -> dict[str, Message]:
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts: dict[str, Message] = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                parts[name] = part
    return parts


def part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else str(payload)
