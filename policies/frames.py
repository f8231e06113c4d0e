"""Deciding, without parsing, which Realtime messages may skip inspection.

Audio frames are most of the traffic and carry nothing a policy needs, so a shell
forwards them verbatim without decoding them. Skipping inspection must not become a way
to smuggle an event past the governor, so the fast path is deliberately narrow: the
message's top-level ``"type"`` key must come first, or second after one key whose value
is a plain string (the Agents SDK writes ``{"audio":"...","type":...}``: pydantic's field
order), it must contain no other ``"type"`` key (a duplicate key could be read differently
by another JSON parser), and no backslash (an escaped key such as ``"typ\\u0065"``
decodes to ``type``; without backslashes a string ends at the next quote, so the leading
key and value are read exactly). Base64 audio never contains a quote or a backslash, so
real audio frames always qualify; anything else falls back to a full parse.
"""

from __future__ import annotations

from typing import Final

# Client events that are forwarded without being decoded.
PASSTHROUGH_CLIENT_TYPES: Final = frozenset({"input_audio_buffer.append"})

# Server events that carry only incremental content, never usage or limits (a test runs each
# through the governor: one it starts to act on cannot stay here).
PASSTHROUGH_SERVER_TYPES: Final = frozenset(
    {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)


def _exact_prefixes(types: frozenset[str], most_common: str) -> tuple[bytes, ...]:
    ordered = [most_common, *sorted(types - {most_common})]
    return tuple(f'{{"type":{gap}"{kind}"'.encode() for kind in ordered for gap in ("", " "))


# The two spellings the official SDKs and OpenAI put on the wire (`JSON.stringify`,
# `json.dumps`), audio first: `startswith` tries them in order.
CLIENT_EXACT_PREFIXES: Final = _exact_prefixes(PASSTHROUGH_CLIENT_TYPES, "input_audio_buffer.append")
SERVER_EXACT_PREFIXES: Final = _exact_prefixes(PASSTHROUGH_SERVER_TYPES, "response.output_audio.delta")

# The Agents SDK's append, `{"audio":"<base64>","type":"input_audio_buffer.append"}`: the
# leading `audio` key (both spellings), and the `type` key after its value (`,` + a prefix).
_LEADING_AUDIO: Final = (b'{"audio":"', b'{"audio": "')


def _type_after(prefixes: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(sep + p[1:] for p in prefixes for sep in (b",", b", "))


_TYPE_AFTER: Final = {
    CLIENT_EXACT_PREFIXES: _type_after(CLIENT_EXACT_PREFIXES),
    SERVER_EXACT_PREFIXES: _type_after(SERVER_EXACT_PREFIXES),
}

_WS_BYTES: Final = b" \t\r\n"


def _skip_ws_bytes(data: bytes, i: int) -> int:
    n = len(data)
    while i < n and data[i] in _WS_BYTES:
        i += 1
    return i


def passthrough_type(data: bytes, allowed: frozenset[str]) -> str | None:
    """Return the event type if the UTF-8 message `data` may be forwarded uninspected, else None."""
    i = _skip_ws_bytes(data, 0)
    if not data.startswith(b"{", i):
        return None
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b'"type"', i):
        i = _past_leading_string_pair(data, i)
        if i < 0 or not data.startswith(b'"type"', i):
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


def _past_leading_string_pair(data: bytes, i: int) -> int:
    """Past `"key": "value",` at `i` (the value a plain string), or -1.

    Only meaningful for a message without backslashes (the caller refuses any): then each
    string ends at the next quote.
    """
    if not data.startswith(b'"', i):
        return -1
    i = data.find(b'"', i + 1)  # the key's closing quote
    if i < 0:
        return -1
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b":", i):
        return -1
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b'"', i):
        return -1
    opening = i
    i = data.find(b'"', i + 1)  # the value's closing quote
    if i < 0 or (i - opening == 5 and data.startswith(b"type", opening + 1)):  # no "type" but the key
        return -1
    i = _skip_ws_bytes(data, i + 1)
    if not data.startswith(b",", i):
        return -1
    return _skip_ws_bytes(data, i + 1)


def exact_passthrough(data: bytes, start: int, end: int, prefixes: tuple[bytes, ...]) -> bool:
    """The relay's per-frame test on the message `data[start:end]`, without copying it.

    True only when the message begins with one of `prefixes` (no whitespace before the
    key, none or one space after the colon), or with a plain-string `audio` key followed
    at once by one of them (`_exact_audio_first`), and meets `passthrough_type`'s other
    conditions: no backslash and no second ``"type"`` key. Every message it accepts,
    `passthrough_type` accepts too; anything else goes to `passthrough_type` or the parser.

    Searching a 1.3 KB payload for ``"type"`` costs more than everything else here, so
    when the message ends with a string value (``..."<value>"}``, as audio appends and
    deltas do) only the part before that value is searched: the value has no quote in it
    (the quote before it was found with a single-byte search, which is `memchr`), so it
    cannot hold a key.
    """
    if not data.startswith(prefixes, start, end):
        return data.startswith(_LEADING_AUDIO, start, end) and _exact_audio_first(data, start, end, prefixes)
    if data.find(b"\\", start, end) >= 0:
        return False
    first = start + 2  # past the opening quote of the first "type"
    if data.endswith(b'"}', start, end):
        opening = data.rfind(b'"', first, end - 2)
        if end - 2 - opening > 6:  # room for no key in the value; the quote itself is searched
            return data.find(b'"type"', first, opening + 1) < 0
    return data.find(b'"type"', first, end) < 0


def _exact_audio_first(data: bytes, start: int, end: int, prefixes: tuple[bytes, ...]) -> bool:
    """`exact_passthrough` for `{"audio":"<value>","type":"<kind>"...}` (the Agents SDK's order).

    The audio value ends at the next quote (a `memchr`), as no backslash may occur; the
    `type` key must follow it at once; what comes after the kind (an `event_id`, or just
    `}`) may hold no other `"type"`.
    """
    if data.find(b"\\", start, end) >= 0:
        return False
    value = start + (10 if data.startswith(_LEADING_AUDIO[0], start, end) else 11)
    close = data.find(b'"', value, end)  # the audio value's closing quote
    after = _TYPE_AFTER.get(prefixes) or _type_after(prefixes)
    if close < 0 or not data.startswith(after, close + 1, end):
        return False
    if close - value == 4 and data.startswith(b"type", value):  # the value is "type": one "type" only
        return False
    return data.find(b'"type"', close + 4, end) < 0  # the type key itself starts before close + 4
