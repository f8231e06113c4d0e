"""`multipart/form-data` bodies of `POST /v1/realtime/calls`: the named parts, bytes exact.

Small on purpose: the body is already bounded by the reader (`gateway.webrtc.bodies`), each
part is kept as the exact bytes between its header block and the next delimiter, and the
first part of each name wins. The standard library's `email` parser is not used: it repairs
malformed input silently (it records defects instead of refusing), decodes
`Content-Transfer-Encoding`, and hides the exact bytes the SDP check must see.
"""

from __future__ import annotations

from email.message import Message

from gateway.errors import GatewayError


def invalid_multipart(message: str) -> GatewayError:
    return GatewayError(400, message, code="invalid_multipart")


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The named parts of a `multipart/form-data` body (first of each name wins); else a 400."""
    boundary = _header("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise invalid_multipart("The multipart body has no boundary.")
    sections = body.split(b"--" + boundary.encode("latin-1"))
    if len(sections) < 3:
        raise invalid_multipart("The multipart body has no parts.")
    parts: dict[str, bytes] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):
            break  # the closing delimiter
        name, content = _part(section)
        if name is not None and name not in parts:
            parts[name] = content
    return parts


def _part(section: bytes) -> tuple[str | None, bytes]:
    """One part's `name` (None without a form-data name) and its content, CRLF or LF framed."""
    section = section[2:] if section.startswith(b"\r\n") else section.removeprefix(b"\n")
    head, sep, content = section.partition(b"\r\n\r\n")
    if not sep:
        head, sep, content = section.partition(b"\n\n")
    if not sep:
        raise invalid_multipart("A multipart part has no header block.")
    content = content.removesuffix(b"\r\n") if content.endswith(b"\r\n") else content.removesuffix(b"\n")
    name = None
    for line in head.decode("latin-1").splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            param = _header("content-disposition", value.strip()).get_param("name", header="content-disposition")
            name = param if isinstance(param, str) else None
    return name, content


def _header(name: str, value: str) -> Message:
    """A one-header message, for the standard library's parameter parsing (quotes, escapes)."""
    message = Message()
    message[name] = value
    return message
