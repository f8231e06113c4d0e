"""Just enough RFC 6455 for the benchmark's own load generator and fake upstream.

The tools that *measure* must cost far less than the relays they measure, so they skip
the `websockets` library's per-message machinery: frames are built and parsed here with
a few byte operations (masking uses the library's C helper when it is there). No
extensions are negotiated; fragmented messages are reassembled; control frames are
returned to the caller to answer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C helper ships in websockets' wheels

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())  # SHA-1 is what RFC 6455 mandates


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def header(opcode: int, length: int, masked: bool) -> bytes:
    mbit = 0x80 if masked else 0
    if length < 126:
        return bytes((0x80 | opcode, mbit | length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, mbit | 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, mbit | 127, length)


def encode(opcode: int, payload: bytes, masked: bool) -> bytes:
    """One whole (FIN) frame; client-to-server frames must be masked."""
    if masked:
        key = os.urandom(4)
        return header(opcode, len(payload), True) + key + apply_mask(payload, key)
    return header(opcode, len(payload), False) + payload


def close_payload(code: int = 1000) -> bytes:
    return struct.pack("!H", code)


class FrameParser:
    """Incremental frame parser: feed bytes, get whole messages and control frames back."""

    __slots__ = ("_buf", "_frag", "_frag_op")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frag: list[bytes] = []
        self._frag_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hlen = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hlen = 10
            masked = b1 & 0x80
            if masked:
                hlen += 4
            end = pos + hlen + length
            if n < end:
                break
            payload = bytes(buf[pos + hlen : end])
            if masked:
                payload = apply_mask(payload, bytes(buf[pos + hlen - 4 : pos + hlen]))
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                self._frag.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag = []
            elif not fin:
                self._frag_op = opcode
                self._frag = [payload]
            else:
                out.append((opcode, payload))
        if pos:
            del buf[:pos]
        return out


def parse_http_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the (lower-cased) headers of an HTTP/1.1 head."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def run(coro: object) -> object:
    """asyncio.run on uvloop when it is installed (it is for uvicorn's sake)."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]
