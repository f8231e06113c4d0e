"""The fast relay's frame and handshake codec: bytes in, headers and frames out, no event loop."""

from __future__ import annotations

import base64
import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.errors import GatewayError
from gateway.realtime.fastrelay import frames
from gateway.realtime.fastrelay.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameHeader,
    ProtocolError,
    build_close,
    build_frame,
    parse_close,
    parse_header,
    payload_of,
)
from gateway.realtime.fastrelay.handshake import (
    HandshakeError,
    accept_key,
    check_switching,
    client_error,
    parse_request,
    parse_response,
    refusal,
    switching_protocols,
)


def reference_parse(data: bytes, *, mask: bool) -> Frame:
    """Parse with the `websockets` library: an independent reading of RFC 6455."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("masked", [True, False])
def test_built_frames_parse_the_same_here_and_in_the_reference(size: int, masked: bool) -> None:
    payload = os.urandom(size)
    wire = build_frame(OP_BINARY, payload, masked=masked)
    header = parse_header(wire, 0, expect_masked=masked)
    assert isinstance(header, FrameHeader)
    assert (header.fin, header.opcode, header.length, header.payload_end) == (True, OP_BINARY, size, len(wire))
    assert (header.mask is not None) == masked
    assert payload_of(wire, header) == payload
    ref = reference_parse(wire, mask=masked)
    assert (ref.opcode, ref.data, ref.fin) == (Opcode.BINARY, payload, True)


def test_masked_frames_use_a_fresh_key_each_time() -> None:
    a, b = (build_frame(OP_TEXT, b"hello", masked=True) for _ in range(2))
    assert a[2:6] != b[2:6] and a[6:] != b"hello"


def test_header_of_a_frame_inside_a_larger_buffer() -> None:
    first = build_frame(OP_TEXT, b"one", masked=False)
    second = build_frame(OP_PING, b"p", masked=False)
    buf = first + second
    h1 = parse_header(buf, 0, expect_masked=False)
    assert isinstance(h1, FrameHeader)
    h2 = parse_header(buf, h1.payload_end, expect_masked=False)
    assert isinstance(h2, FrameHeader) and h2.opcode == OP_PING and h2.is_control
    assert payload_of(buf, h2) == b"p" and h2.payload_end == len(buf)


@pytest.mark.parametrize(("size", "masked"), [(10, True), (300, True), (70_000, True), (10, False), (300, False)])
def test_an_incomplete_header_says_how_many_bytes_it_needs(size: int, masked: bool) -> None:
    wire = build_frame(OP_TEXT, b"x" * size, masked=masked)
    full = parse_header(wire, 0, expect_masked=masked)
    assert isinstance(full, FrameHeader)
    head_len = full.payload_start
    for cut in range(head_len):
        need = parse_header(wire[:cut], 0, expect_masked=masked)
        assert isinstance(need, int) and cut < need <= head_len


@pytest.mark.parametrize(
    ("wire", "expect_masked", "why"),
    [
        (bytes([0x81, 0x00]), True, "must be masked"),
        (bytes([0x81, 0x80]) + b"\x00" * 4, False, "must not be masked"),
        (bytes([0xC1, 0x00]), False, "reserved bits"),
        (bytes([0x83, 0x00]), False, "unknown opcode"),
        (bytes([0x09, 0x00]), False, "control frames"),  # a fragmented ping
        (bytes([0x89, 126, 0, 126]), False, "control frames"),  # a 126-byte ping
        (bytes([0x82, 127]) + b"\x80" + b"\x00" * 7, False, "most significant bit"),
    ],
)
def test_frames_a_peer_may_not_send_are_protocol_errors(wire: bytes, expect_masked: bool, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_header(wire, 0, expect_masked=expect_masked)


def test_pure_python_mask_matches_the_c_one() -> None:
    key = os.urandom(4)
    for n in (0, 1, 3, 4, 5, 1000, 4099):
        data = os.urandom(n)
        assert frames._apply_mask_py(data, key) == frames.apply_mask(data, key)
        assert frames._apply_mask_py(frames._apply_mask_py(data, key), key) == data


def test_close_frames_round_trip_and_long_reasons_are_cut_on_a_character_boundary() -> None:
    wire = build_close(1014, "é" * 100, masked=True)
    header = parse_header(wire, 0, expect_masked=True)
    assert isinstance(header, FrameHeader) and header.opcode == OP_CLOSE and header.length <= 125
    code, reason = parse_close(payload_of(wire, header))
    assert code == 1014 and set(reason) == {"é"}
    assert parse_close(b"") == (None, "")
    ref = reference_parse(build_close(1000, "bye", masked=False), mask=False)
    assert ref.data == b"\x03\xe8bye"


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x03\xee", b"\x07\xd0", b"\x03\xe8\xff"])
def test_invalid_close_frames_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_close(payload)


def test_continuation_frames_carry_fin_and_opcode() -> None:
    first = build_frame(OP_TEXT, b"ab", masked=False, fin=False)
    last = build_frame(OP_CONTINUATION, b"cd", masked=False)
    h1, h2 = parse_header(first, 0, expect_masked=False), parse_header(last, 0, expect_masked=False)
    assert isinstance(h1, FrameHeader) and isinstance(h2, FrameHeader)
    assert (h1.fin, h1.opcode, h2.fin, h2.opcode) == (False, OP_TEXT, True, OP_CONTINUATION)


# The opening handshake

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_head(*extra: str, path: str = "/v1/realtime?model=gpt-realtime") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: gw",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return "\r\n".join(lines).encode()


def test_an_upgrade_request_is_parsed_with_query_and_subprotocols() -> None:
    request = parse_request(upgrade_head("Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.vg_live_x"))
    assert (request.method, request.path, request.query_string) == ("GET", "/v1/realtime", b"model=gpt-realtime")
    assert request.subprotocols == ["realtime", "openai-insecure-api-key.vg_live_x"]
    assert request.header(b"host") == "gw" and client_error(request) is None


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (upgrade_head().replace(b"GET", b"POST"), 405),
        (upgrade_head().replace(b"Upgrade: websocket", b"Upgrade: h2c"), 400),
        (upgrade_head().replace(b"Version: 13", b"Version: 8"), 426),
        (upgrade_head().replace(KEY.encode(), b"short"), 400),
    ],
)
def test_invalid_upgrade_requests_are_refused_with_a_status(head: bytes, status: int) -> None:
    error = client_error(parse_request(head))
    assert error is not None and error.status == status


def test_malformed_request_heads_raise() -> None:
    with pytest.raises(HandshakeError):
        parse_request(b"GET /\r\nHost: x")
    with pytest.raises(HandshakeError):
        parse_request(b"GET / HTTP/1.1\r\nno colon here")


def test_101_answers_the_key_and_only_the_chosen_subprotocol() -> None:
    head = switching_protocols(KEY, "realtime", [("x-voxgate-session-id", "vgs_1")]).decode()
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n") and head.endswith("\r\n\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}" in head
    assert "Sec-WebSocket-Protocol: realtime\r\n" in head and "Extensions" not in head
    assert "Sec-WebSocket-Protocol" not in switching_protocols(KEY, None).decode()
    # RFC 6455's worked example.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_refusal_is_a_complete_http_response_with_the_openai_error_shape() -> None:
    raw = refusal(GatewayError(503, "draining", code="gateway_draining", retry_after=1.0))
    head, _, body = raw.partition(b"\r\n\r\n")
    response = parse_response(head)
    assert response.status == 503 and response.content_length == len(body)
    assert response.headers["retry-after"] == "1" and response.headers["connection"] == "close"
    assert body == GatewayError(503, "draining", code="gateway_draining").body_bytes()


def test_upstream_101_must_match_our_key_and_negotiate_nothing() -> None:
    good = parse_response(switching_protocols(KEY, None).rstrip(b"\r\n"))
    check_switching(good, KEY)
    with pytest.raises(HandshakeError, match="Accept"):
        check_switching(good, base64.b64encode(b"another key 1234").decode())
    deflate = parse_response(
        switching_protocols(KEY, None, [("Sec-WebSocket-Extensions", "permessage-deflate")]).rstrip(b"\r\n")
    )
    with pytest.raises(HandshakeError, match="extension"):
        check_switching(deflate, KEY)
