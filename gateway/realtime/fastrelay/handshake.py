"""HTTP/1.1 for the WebSocket opening handshake (RFC 6455 section 4), both directions.

The fast relay answers the client's upgrade and performs its own upgrade toward the
upstream, so it needs exactly this much HTTP: parse a request or response head, check
the accept key, and build a 101 or a refusal. Pure functions over bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from gateway.errors import GatewayError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 16 * 1024

Headers = list[tuple[bytes, bytes]]  # names lowercased, in arrival order


class HandshakeError(ValueError):
    """A malformed request or response head."""


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A client's upgrade request, as far as the relay cares."""

    method: str
    path: str
    query_string: bytes
    headers: Headers

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lowercase), decoded as Latin-1."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def tokens(self, name: bytes) -> list[str]:
        """Comma-separated values across every `name` header, lowercased and stripped."""
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out += [t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()]
        return out

    @property
    def subprotocols(self) -> list[str]:
        """Offered subprotocols, case kept (the browser key rides in one)."""
        out: list[str] = []
        for key, value in self.headers:
            if key == b"sec-websocket-protocol":
                out += [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]
        return out


def _split_head(head: bytes) -> tuple[bytes, Headers]:
    lines = head.split(b"\r\n")
    headers: Headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HandshakeError("malformed header line")
        headers.append((name.lower(), value.strip()))
    return lines[0], headers


def parse_request(head: bytes) -> UpgradeRequest:
    """Parse a request head (without the blank line that ends it)."""
    start, headers = _split_head(head)
    parts = start.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HandshakeError("malformed request line")
    target = urlsplit(parts[1].decode("latin-1"))
    return UpgradeRequest(parts[0].decode("latin-1"), target.path, target.query.encode("latin-1"), headers)


def client_error(request: UpgradeRequest) -> GatewayError | None:
    """Why `request` is not a valid WebSocket opening handshake, or None if it is."""
    if request.method != "GET":
        return GatewayError(405, "A WebSocket upgrade must use GET.", code="method_not_allowed")
    if "websocket" not in request.tokens(b"upgrade") or "upgrade" not in request.tokens(b"connection"):
        return GatewayError(400, "Missing WebSocket upgrade headers.", code="websocket_required")
    if request.header(b"sec-websocket-version") != "13":
        return GatewayError(
            426,
            "Only WebSocket version 13 is supported.",
            code="unsupported_websocket_version",
            headers={"sec-websocket-version": "13"},
        )
    key = request.header(b"sec-websocket-key") or ""
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return GatewayError(400, "Invalid Sec-WebSocket-Key.", code="invalid_websocket_key")
    return None


def head_too_large(limit: int) -> GatewayError:
    """The refusal of a request head (request line and headers) over `limit` bytes."""
    return GatewayError(
        431,
        f"Request header fields too large: the request head may be at most {limit} bytes.",
        code="request_header_fields_too_large",
    )


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode()  # noqa: S324 (RFC 6455)


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def switching_protocols(key: str, subprotocol: str | None, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The 101 answer: no extensions, and the subprotocol only when one was chosen."""
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return _head(101, [*headers, *extra])


def refusal(error: GatewayError) -> bytes:
    """A whole HTTP response refusing the upgrade, with the OpenAI-shaped body."""
    body = error.body_bytes()
    headers = [*error.response_headers().items(), ("content-length", str(len(body))), ("connection", "close")]
    return _head(error.status, headers) + body


def upgrade_request(host: str, target: str, key: str, headers: Mapping[str, str]) -> bytes:
    """The request voxgate sends upstream: no extensions offered, so none can be negotiated."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        return int(raw) if raw and raw.isdigit() else None


def parse_response(head: bytes) -> UpstreamResponse:
    start, headers = _split_head(head)
    parts = start.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError("malformed status line")
    return UpstreamResponse(int(parts[1]), {k.decode("latin-1"): v.decode("latin-1") for k, v in headers})


def check_switching(response: UpstreamResponse, key: str) -> None:
    """Raise HandshakeError unless `response` completes our upgrade exactly as offered."""
    tokens = [t.strip().lower() for t in response.headers.get("connection", "").split(",")]
    if response.headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in tokens:
        raise HandshakeError("upstream 101 lacks the upgrade headers")
    if response.headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeError("upstream Sec-WebSocket-Accept does not match our key")
    if response.headers.get("sec-websocket-extensions"):
        raise HandshakeError("upstream negotiated an extension we did not offer")
