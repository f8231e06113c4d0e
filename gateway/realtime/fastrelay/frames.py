"""The WebSocket frame format (RFC 6455 section 5), only as much as a splicing relay needs.

A relay forwards frames as they arrived, so this module reads frame *headers* and leaves
payloads where they are: `parse_header` returns offsets into the caller's buffer. It
builds whole frames only for the messages voxgate itself sends (governor events, close
frames). No I/O and no state beyond the arguments.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_DATA_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})

MAX_CONTROL_PAYLOAD: Final = 125
# Close codes no endpoint may put on the wire (RFC 6455 7.4.1).
UNSENDABLE_CLOSE_CODES: Final = frozenset({1004, 1005, 1006, 1015})

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class ProtocolError(ValueError):
    """The peer broke RFC 6455; the relay closes that side with 1002."""


def _apply_mask_py(data: bytes, mask: bytes) -> bytes:
    # XOR as one big integer: far faster than a per-byte loop.
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


MaskFunction = Callable[[bytes, bytes], bytes]
try:  # the C implementation that ships with `websockets`
    from websockets.speedups import apply_mask as _apply_mask_c

    apply_mask: MaskFunction = _apply_mask_c
except ImportError:  # pragma: no cover - only without the compiled extension
    apply_mask = _apply_mask_py
"""`apply_mask(data, mask)`: XOR `data` with the 4-byte `mask` (masking and unmasking are the same)."""


class FrameHeader(NamedTuple):
    """One frame's header, with the payload located in the buffer it was parsed from.

    A named tuple, not a frozen dataclass: one is built for every frame, and a tuple is built
    in a third of the time (a frozen dataclass sets each field through `object.__setattr__`)."""

    fin: bool
    opcode: int
    mask: bytes | None
    payload_start: int
    payload_end: int

    @property
    def length(self) -> int:
        return self.payload_end - self.payload_start

    @property
    def is_control(self) -> bool:
        return self.opcode >= 0x8


def parse_header(buf: bytes, pos: int, *, expect_masked: bool) -> FrameHeader | int:
    """Parse the frame header at `buf[pos:]`.

    Returns the header, or, when `buf` does not yet hold the whole header, the number of
    bytes from `pos` that it needs. Raises `ProtocolError` for a frame the peer may not
    send: reserved bits (nothing was negotiated), unknown opcodes, the wrong masking for
    its direction, or a fragmented or oversized control frame.
    """
    available = len(buf) - pos
    if available < 2:
        return 2
    b0 = buf[pos]
    b1 = buf[pos + 1]
    if b0 & 0x70:
        raise ProtocolError("reserved bits set without a negotiated extension")
    opcode = b0 & 0x0F
    fin = bool(b0 & 0x80)
    if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
        raise ProtocolError(f"unknown opcode {opcode:#x}")
    masked = bool(b1 & 0x80)
    if masked != expect_masked:
        raise ProtocolError("client frames must be masked" if expect_masked else "server frames must not be masked")
    length = b1 & 0x7F
    head = 2
    if length == 126:
        head = 4
        if available < head:
            return head + (4 if masked else 0)
        length = _U16.unpack_from(buf, pos + 2)[0]
    elif length == 127:
        head = 10
        if available < head:
            return head + (4 if masked else 0)
        length = _U64.unpack_from(buf, pos + 2)[0]
        if length >> 63:
            raise ProtocolError("payload length has its most significant bit set")
    if opcode >= 0x8 and (not fin or length > MAX_CONTROL_PAYLOAD):
        raise ProtocolError("control frames must be final and at most 125 bytes")
    mask = None
    if masked:
        if available < head + 4:
            return head + 4
        mask = bytes(buf[pos + head : pos + head + 4])
        head += 4
    start = pos + head
    return FrameHeader(fin, opcode, mask, start, start + length)


def payload_of(buf: bytes, header: FrameHeader) -> bytes:
    """The frame's payload, unmasked."""
    data = bytes(buf[header.payload_start : header.payload_end])
    return apply_mask(data, header.mask) if header.mask is not None else data


def build_frame(opcode: int, payload: bytes, *, masked: bool, fin: bool = True) -> bytes:
    """A whole frame: unmasked toward a client, masked with a fresh random key toward a server."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + _U16.pack(n)
    else:
        head = bytes((first, mask_bit | 127)) + _U64.pack(n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_payload(code: int | None, reason: str = "") -> bytes:
    """A close frame's body; the reason is cut to fit a control frame (on a UTF-8 boundary)."""
    if code is None:
        return b""
    raw = reason.encode()[: MAX_CONTROL_PAYLOAD - 2]
    return _U16.pack(code) + raw.decode("utf-8", "ignore").encode()


def build_close(code: int | None, reason: str = "", *, masked: bool) -> bytes:
    return build_frame(OP_CLOSE, close_payload(code, reason), masked=masked)


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a close frame's unmasked body; (None, "") when it carries no code."""
    if len(payload) < 2:
        if payload:
            raise ProtocolError("close frame with a one-byte body")
        return None, ""
    code = _U16.unpack_from(payload)[0]
    if code < 1000 or code in UNSENDABLE_CLOSE_CODES or 1016 <= code < 3000:
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not UTF-8") from None
    return code, reason
