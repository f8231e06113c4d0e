"""Deciding, without parsing, which Realtime messages may skip inspection.

Audio frames are most of the traffic and carry nothing a policy needs, so a shell
forwards them verbatim without decoding them. Skipping inspection must not become a way
to smuggle an event past the governor, so the fast path is deliberately narrow: the
message must *begin* with its top-level ``"type"`` key, contain no other ``"type"`` key
(a duplicate key could be read differently by another JSON parser), and contain no
backslash (an escaped key such as ``"typ\\u0065"`` decodes to ``type``). Base64 audio
never contains a quote or a backslash, so real audio frames always qualify; anything
else falls back to a full parse.
"""

from __future__ import annotations

from typing import Final

# Client events that are forwarded without being decoded.
PASSTHROUGH_CLIENT_TYPES: Final = frozenset({"input_audio_buffer.append"})

# Server events that carry only incremental content, never usage or limits.
PASSTHROUGH_SERVER_TYPES: Final = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)

_WS_STR: Final = " \t\r\n"
_WS_BYTES: Final = b" \t\r\n"


def _skip_ws_str(data: str, i: int) -> int:
    n = len(data)
    while i < n and data[i] in _WS_STR:
        i += 1
    return i


def _skip_ws_bytes(data: bytes, i: int) -> int:
    n = len(data)
    while i < n and data[i] in _WS_BYTES:
        i += 1
    return i


def passthrough_type(data: str | bytes, allowed: frozenset[str]) -> str | None:
    """Return the event type if `data` may be forwarded uninspected, else None."""
    if isinstance(data, str):
        return _passthrough_str(data, allowed)
    return _passthrough_bytes(data, allowed)


def _passthrough_str(data: str, allowed: frozenset[str]) -> str | None:
    i = _skip_ws_str(data, 0)
    if not data.startswith("{", i):
        return None
    i = _skip_ws_str(data, i + 1)
    if not data.startswith('"type"', i):
        return None
    i = _skip_ws_str(data, i + 6)
    if not data.startswith(":", i):
        return None
    i = _skip_ws_str(data, i + 1)
    if not data.startswith('"', i):
        return None
    end = data.find('"', i + 1)
    if end < 0:
        return None
    kind = data[i + 1 : end]
    if kind not in allowed or "\\" in data or data.find('"type"', end) >= 0:
        return None
    return kind


def _passthrough_bytes(data: bytes, allowed: frozenset[str]) -> str | None:
    i = _skip_ws_bytes(data, 0)
    if not data.startswith(b"{", i):
        return None
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b'"type"', i):
        return None
    i = _skip_ws_bytes(data, i + 6)
    if not data.startswith(b":", i):
        return None
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b'"', i):
        return None
    end = data.find(b'"', i + 1)
    if end < 0:
        return None
    try:
        kind = data[i + 1 : end].decode("ascii")
    except UnicodeDecodeError:
        return None
    if kind not in allowed or b"\\" in data or data.find(b'"type"', end) >= 0:
        return None
    return kind
