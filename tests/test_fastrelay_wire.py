"""The fast relay at frame level: a raw client, voxgate, and a scripted upstream, on loopback.

The client here writes and reads frames byte by byte, and the upstream is a `websockets`
server whose behaviour each test scripts, so every case a real relay must handle can be
produced on purpose: fragments, pings both ways, close handshakes both ways, oversized
messages, TCP resets on either side, and a client that stops reading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.realtime.fastrelay.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameHeader,
    build_close,
    build_frame,
    parse_close,
    parse_header,
    payload_of,
)
from gateway.realtime.fastrelay.handshake import HEAD_END, accept_key, parse_response
from gateway.realtime.fastrelay.relay import WRITE_HIGH_WATER, FastRelay
from gateway.session.verdict import Verdict
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway

pytestmark = pytest.mark.e2e

MAX_MESSAGE = 64 * 1024
Script = Callable[[ServerConnection], Awaitable[None]]
CLEARED = json.dumps({"type": "input_audio_buffer.cleared"})


async def answer_until_closed(ws: ServerConnection) -> None:
    """Read until the connection closes, answering `input_audio_buffer.clear` as Realtime does
    (voxgate's fence at every session end the client's side or voxgate's starts)."""
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            if json.loads(message).get("type") == "input_audio_buffer.clear":
                await ws.send(CLEARED)


class ScriptedUpstream:
    """A Realtime stand-in whose per-connection behaviour a test sets in `script`."""

    def __init__(self) -> None:
        self.script: Script = self.echo_events
        self.connections: list[ServerConnection] = []
        self.received: list[str | bytes] = []
        self.closed = asyncio.Event()
        self.server: Server | None = None
        self.handshake_delay = 0.0  # seconds before answering a handshake

    async def start(self) -> ScriptedUpstream:
        self.server = await serve(
            self._handler, "127.0.0.1", 0, compression=None, max_size=None, process_request=self._delay
        )
        return self

    async def _delay(self, connection: ServerConnection, request: Any) -> None:
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        try:
            await ws.send(json.dumps({"type": "session.created", "session": {"id": "sess_wire"}}))
            await self.script(ws)
        finally:
            self.closed.set()

    async def echo_events(self, ws: ServerConnection) -> None:
        """Record every message; answer a clear as Realtime does, anything else with an event naming it."""
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                self.received.append(message)
                if json.loads(message).get("type") == "input_audio_buffer.clear":
                    await ws.send(CLEARED)
                else:
                    await ws.send(json.dumps({"type": "conversation.item.done", "echo": len(message)}))

    def reset(self) -> None:
        self.script, self.received, self.closed = self.echo_events, [], asyncio.Event()
        self.handshake_delay = 0.0


class RawClient:
    """A WebSocket client that sends and reads individual frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def connect(cls, gateway: Gateway, headers: dict[str, str]) -> RawClient:
        reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
        client = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /v1/realtime?model=gpt-realtime HTTP/1.1",
            f"Host: {gateway.server.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(HEAD_END)
        response = parse_response(head[: -len(HEAD_END)])
        client.status, client.headers = response.status, response.headers
        if response.status == 101:
            assert response.headers["sec-websocket-accept"] == accept_key(key)
        return client

    def send(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.writer.write(build_frame(opcode, payload, masked=True, fin=fin))

    def send_json(self, event: dict[str, Any]) -> None:
        self.send(OP_TEXT, json.dumps(event).encode())

    async def frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """The next frame as (fin, opcode, payload); server frames must arrive unmasked."""
        async with asyncio.timeout(timeout):
            while True:
                header = parse_header(self.buf, 0, expect_masked=False)
                if isinstance(header, FrameHeader) and header.payload_end <= len(self.buf):
                    payload = payload_of(self.buf, header)
                    self.buf = self.buf[header.payload_end :]
                    return header.fin, header.opcode, payload
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError
                self.buf += chunk

    async def event(self) -> dict[str, Any]:
        fin, opcode, payload = await self.frame()
        assert (fin, opcode) == (True, OP_TEXT), (fin, opcode, payload[:80])
        return json.loads(payload)  # type: ignore[no-any-return]

    async def until_close(self) -> tuple[int | None, str]:
        while True:
            _, opcode, payload = await self.frame()
            if opcode == OP_CLOSE:
                return parse_close(payload)

    async def eof(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass

    def reset(self) -> None:
        """Drop the connection with a TCP RST, no close frame."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    up = await ScriptedUpstream().start()
    yield up
    assert up.server is not None
    up.server.close()
    await up.server.wait_closed()


@pytest.fixture(scope="module")
async def wire_gateway(pg_dsn: str, upstream: ScriptedUpstream) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, upstream.base_url, max_message_bytes=MAX_MESSAGE)
    gw = await start_gateway(settings)
    yield gw
    await gw.stop()


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def connect(wire_gateway: Gateway, upstream: ScriptedUpstream, tenant: TenantKey) -> AsyncIterator[Connect]:
    """Open a session whose upstream runs `script` (default: record and answer each message)."""
    opened: list[RawClient] = []

    async def open_session(script: Script | None = None) -> RawClient:
        upstream.reset()
        if script is not None:
            upstream.script = script
        raw = await RawClient.connect(wire_gateway, {"Authorization": f"Bearer {tenant.secret}"})
        opened.append(raw)
        assert raw.status == 101
        assert (await raw.event())["type"] == "session.created"
        return raw

    yield open_session
    for raw in opened:
        raw.close()


@pytest.fixture
async def client(connect: Connect) -> RawClient:
    return await connect()


async def end_reason(gateway: Gateway, pool: asyncpg.Pool, tenant: TenantKey) -> str:
    await gateway.settle()
    reasons = await pool.fetch("SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
    [reason] = [r["end_reason"] for r in reasons]
    return str(reason)


def the_relay(gateway: Gateway) -> FastRelay:
    [relay] = gateway.services.live.sessions
    assert isinstance(relay, FastRelay)
    return relay


async def test_fragmented_client_message_is_inspected_whole_and_forwarded_as_its_fragments(connect: Connect) -> None:
    fragments: list[str] = []

    async def streaming(ws: ServerConnection) -> None:
        async for fragment in ws.recv_streaming():
            fragments.append(str(fragment))
        await ws.send(json.dumps({"type": "conversation.item.done"}))
        await answer_until_closed(ws)

    client = await connect(streaming)
    event = json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user"}})
    parts = [event[:10], event[10:30], event[30:]]
    client.send(OP_TEXT, parts[0].encode(), fin=False)
    client.send(OP_PING, b"in-between")  # control frames may interleave with fragments
    client.send(OP_CONTINUATION, parts[1].encode(), fin=False)
    client.send(OP_CONTINUATION, parts[2].encode())
    assert await client.frame() == (True, OP_PONG, b"in-between")
    assert (await client.event())["type"] == "conversation.item.done"
    assert fragments == parts


async def test_fragmented_garbage_is_answered_with_an_error_and_not_forwarded(
    client: RawClient, upstream: ScriptedUpstream
) -> None:
    client.send(OP_TEXT, b"{not", fin=False)
    client.send(OP_CONTINUATION, b" json")
    error = await client.event()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
    client.send_json({"type": "input_audio_buffer.clear"})
    assert (await client.event())["type"] == "input_audio_buffer.cleared"
    assert upstream.received == ['{"type": "input_audio_buffer.clear"}']


async def test_fragmented_upstream_message_reaches_the_client_as_the_same_frames(connect: Connect) -> None:
    async def fragmented(ws: ServerConnection) -> None:
        await ws.send(iter(['{"type": "response.done", ', '"response": {"id": "resp_1", ', '"status": "completed"}}']))
        await answer_until_closed(ws)

    client = await connect(fragmented)
    frames = [await client.frame()]
    while not frames[-1][0]:
        frames.append(await client.frame())
    # Exactly the frames `websockets` sent: three fragments and its empty final continuation.
    assert [(fin, op) for fin, op, _ in frames] == [
        (False, OP_TEXT),
        (False, OP_CONTINUATION),
        (False, OP_CONTINUATION),
        (True, OP_CONTINUATION),
    ]
    assert frames[-1][2] == b""
    assert json.loads(b"".join(p for _, _, p in frames))["response"]["id"] == "resp_1"


async def test_pings_and_pongs_cross_the_relay_both_ways(client: RawClient, upstream: ScriptedUpstream) -> None:
    client.send(OP_PING, b"from-client")
    assert await client.frame() == (True, OP_PONG, b"from-client")  # answered by upstream
    ws = upstream.connections[-1]
    waiter = await ws.ping(b"from-upstream")
    _, opcode, payload = await client.frame()
    assert (opcode, payload) == (OP_PING, b"from-upstream")
    client.send(OP_PONG, payload)
    async with asyncio.timeout(5):
        await waiter


async def test_client_initiated_close_handshake(
    wire_gateway: Gateway, client: RawClient, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ws = upstream.connections[-1]
    client.writer.write(build_close(1000, "bye", masked=True))
    assert await client.until_close() == (1000, "")
    await client.eof()  # the server side closes TCP after the handshake
    async with asyncio.timeout(5):
        await upstream.closed.wait()
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None and (rcvd.code, rcvd.reason) == (1000, "bye")
    assert await end_reason(wire_gateway, pg_pool, tenant) == "client_closed"


async def test_upstream_initiated_close_handshake(
    wire_gateway: Gateway, client: RawClient, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ws = upstream.connections[-1]
    closing = asyncio.create_task(ws.close(1000, "done"))
    assert await client.until_close() == (1000, "done")
    client.writer.write(build_close(1000, masked=True))
    await client.eof()
    async with asyncio.timeout(5):
        await closing
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000  # voxgate answered the handshake
    assert await end_reason(wire_gateway, pg_pool, tenant) == "upstream_closed"


@pytest.mark.parametrize("fragmented", [False, True])
async def test_oversized_client_message_closes_with_1009_and_reaches_nobody(
    wire_gateway: Gateway,
    client: RawClient,
    upstream: ScriptedUpstream,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    fragmented: bool,
) -> None:
    big = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (MAX_MESSAGE + 10)}).encode()
    if fragmented:
        half = len(big) // 2
        client.send(OP_TEXT, big[:half], fin=False)
        client.send(OP_CONTINUATION, big[half:])
    else:
        client.send(OP_TEXT, big)
    assert await client.until_close() == (1009, "")
    client.writer.write(build_close(1009, masked=True))
    await client.eof()
    assert await end_reason(wire_gateway, pg_pool, tenant) == "client_closed"
    # Upstream got none of it: only voxgate's fence at the session's end.
    assert [json.loads(m)["type"] for m in upstream.received] == ["input_audio_buffer.clear"]


async def test_empty_continuation_frames_count_toward_the_message_limit(
    wire_gateway: Gateway, client: RawClient, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    # Found by a hostile review: zero-length continuation frames added nothing to the message's size,
    # yet each was kept (12 MB of them on the wire held 123 MB). Each fragment now counts what keeping
    # it costs, so a stream of them ends in 1009 like any oversized message.
    client.send(OP_TEXT, b'{"type": "input_audio_buffer.append", "audio": "', fin=False)
    for _ in range(4 * MAX_MESSAGE // 512):
        client.send(OP_CONTINUATION, b"", fin=False)
    assert await client.until_close() == (1009, "")
    client.writer.write(build_close(1009, masked=True))
    await client.eof()
    assert await end_reason(wire_gateway, pg_pool, tenant) == "client_closed"
    assert [json.loads(m)["type"] for m in upstream.received] == ["input_audio_buffer.clear"]


async def test_what_a_client_sends_before_the_101_waits_in_its_socket_past_a_bound(
    wire_gateway: Gateway, upstream: ScriptedUpstream, tenant: TenantKey
) -> None:
    # Found by a hostile review: while admission ran (here, a slow upstream handshake) voxgate read and
    # kept whatever the client sent, without limit (300 MB in 0.4 s). Past EARLY_BYTES it stops reading:
    # the rest stays in the client's own buffers, and everything still goes upstream once the session starts.
    upstream.reset()
    upstream.handshake_delay = 1.5
    before = len(upstream.connections)
    _reader, writer = await asyncio.open_connection(wire_gateway.server.host, wire_gateway.server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {tenant.secret}\r\n\r\n"
    )
    append = build_frame(
        OP_TEXT, json.dumps({"type": "input_audio_buffer.append", "audio": "QUFB" * 8000}).encode(), masked=True
    )
    flood = append * (40 * 1024 * 1024 // len(append))
    writer.write(head.encode() + flood)
    await asyncio.sleep(1.0)  # the handshake upstream is still being answered
    assert writer.transport.get_write_buffer_size() > 20 * 1024 * 1024  # the kernel's buffers hold a few MB at most
    writer.transport.abort()
    # Not read, the socket's loss is seen at voxgate's next write (its 101, then its first frames): the
    # session that was being admitted starts and ends at once. Wait for that before the next test.
    async with asyncio.timeout(10):
        while len(upstream.connections) == before or wire_gateway.services.live.sessions:
            await asyncio.sleep(0.05)
        await upstream.connections[-1].wait_closed()


async def test_client_tcp_reset_ends_the_session_and_closes_upstream(
    wire_gateway: Gateway, client: RawClient, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ws = upstream.connections[-1]
    client.reset()
    async with asyncio.timeout(5):
        await upstream.closed.wait()
        await answer_until_closed(ws)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    assert await end_reason(wire_gateway, pg_pool, tenant) == "client_closed"
    assert len(wire_gateway.services.live) == 0


async def test_upstream_tcp_reset_closes_the_client_with_1014(
    wire_gateway: Gateway, client: RawClient, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    ws = upstream.connections[-1]
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()
    assert await client.until_close() == (1014, "upstream connection lost")
    client.writer.write(build_close(1014, masked=True))
    await client.eof()
    assert await end_reason(wire_gateway, pg_pool, tenant) == "upstream_error"


async def test_a_client_that_stops_reading_throttles_the_upstream(wire_gateway: Gateway, connect: Connect) -> None:
    delta = json.dumps({"type": "response.output_audio.delta", "delta": "QUJD" * 1024}).encode()
    sent = 0
    total = 8000  # ~33 MB: far more than the socket buffers on both hops can hide

    async def flood(ws: ServerConnection) -> None:
        nonlocal sent
        for _ in range(total):
            await ws.send(delta.decode())
            sent += 1
        await answer_until_closed(ws)

    client = await connect(flood)
    await asyncio.sleep(1.0)  # the client reads nothing meanwhile
    relay = the_relay(wire_gateway)
    stalled_at = sent
    await asyncio.sleep(0.3)
    assert sent == stalled_at < total  # upstream writes are blocked...
    assert relay.upstream.paused_by_peer  # ...because voxgate stopped reading it
    # The high-water mark plus at most one read (asyncio reads up to 256 KiB at once).
    assert relay.client.transport.get_write_buffer_size() <= WRITE_HIGH_WATER + 256 * 1024
    received = 0
    while received < total:
        fin, opcode, payload = await client.frame()
        assert (fin, opcode) == (True, OP_TEXT) and payload == delta
        received += 1
    assert sent == total and not relay.upstream.paused_by_peer


async def test_an_upstream_that_stops_reading_throttles_the_client(wire_gateway: Gateway, connect: Connect) -> None:
    append = json.dumps({"type": "input_audio_buffer.append", "audio": "QUJD" * 1024}).encode()
    total = 8000
    release = asyncio.Event()
    received = 0

    async def stalled(ws: ServerConnection) -> None:
        nonlocal received
        await release.wait()
        async for message in ws:
            if json.loads(message)["type"] == "input_audio_buffer.clear":
                await ws.send(CLEARED)  # the fence, once the test is over
                continue
            received += 1
            if received == total:
                await ws.send(json.dumps({"type": "conversation.item.done"}))

    client = await connect(stalled)
    try:
        for _ in range(total):
            client.send(OP_TEXT, append)
        await asyncio.sleep(1.0)
        relay = the_relay(wire_gateway)
        assert relay.client.paused_by_peer  # voxgate stopped reading the client...
        # ...and holds little: the high-water mark plus at most one read (asyncio reads up to 256 KiB at once).
        assert relay.upstream.transport.get_write_buffer_size() <= WRITE_HIGH_WATER + 256 * 1024
        assert client.writer.transport.get_write_buffer_size() > 0  # the client's own sends are backed up
    finally:
        release.set()  # never leave the scripted upstream stalled (its server waits for handlers on close)
    assert (await client.event())["type"] == "conversation.item.done"
    assert received == total and not relay.client.paused_by_peer


async def test_browser_subprotocol_is_answered_with_realtime_only_and_nothing_is_negotiated(
    wire_gateway: Gateway, upstream: ScriptedUpstream, tenant: TenantKey
) -> None:
    upstream.reset()
    raw = await RawClient.connect(
        wire_gateway,
        {
            "Sec-WebSocket-Protocol": f"realtime, openai-insecure-api-key.{tenant.secret}",
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        },
    )
    try:
        assert raw.status == 101
        assert raw.headers["sec-websocket-protocol"] == "realtime"
        assert "sec-websocket-extensions" not in raw.headers
        assert tenant.secret not in json.dumps(raw.headers)
        assert raw.headers["x-voxgate-session-id"].startswith("vgs_")
        assert (await raw.event())["type"] == "session.created"
        request = upstream.connections[-1].request
        assert request is not None
        assert "sec-websocket-extensions" not in request.headers and "sec-websocket-protocol" not in request.headers
        assert tenant.secret not in str(request.headers)
    finally:
        raw.close()


async def test_binary_client_message_gets_an_error_and_upstream_binary_passes(connect: Connect) -> None:
    async def binary(ws: ServerConnection) -> None:
        await ws.send(b"\x00\x01upstream-bytes")
        await answer_until_closed(ws)

    client = await connect(binary)
    assert await client.frame() == (True, OP_BINARY, b"\x00\x01upstream-bytes")
    client.send(OP_BINARY, b"\x00\x01")
    error = await client.event()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_json"


AUDIO_B64 = base64.b64encode(os.urandom(960)).decode()


def append_event(n: int) -> bytes:
    return json.dumps({"type": "input_audio_buffer.append", "event_id": f"evt_{n}", "audio": AUDIO_B64}).encode()


def delta_event(n: int) -> bytes:
    event = {
        "type": "response.output_audio.delta",
        "event_id": f"event_{n}",
        "response_id": "resp_1",
        "item_id": "item_1",
        "output_index": 0,
        "content_index": 0,
        "delta": AUDIO_B64,
    }
    return json.dumps(event).encode()


@pytest.mark.parametrize("cut", [None, 3, 700, 1500])
async def test_several_client_frames_in_one_read_keep_their_order_and_their_inspection(
    connect: Connect, upstream: ScriptedUpstream, cut: int | None
) -> None:
    """Audio frames take the relay's fast path, the rest `_feed`; one read may hold both,
    and a frame may be cut anywhere between two reads."""
    client = await connect()
    frames = [build_frame(OP_TEXT, m, masked=True) for m in (append_event(1), append_event(2))]
    frames.append(build_frame(OP_TEXT, b'{"type": "response.create", "response": {', masked=True))
    frames.append(build_frame(OP_TEXT, append_event(3), masked=True))
    smuggler = b'{"type": "input_audio_buffer.append", "audio": "' + AUDIO_B64.encode() + b'", "type": "x.y"}'
    frames.append(build_frame(OP_TEXT, smuggler, masked=True))
    frames.append(build_frame(OP_TEXT, append_event(4), masked=True))
    wire = b"".join(frames)
    if cut is None:
        client.writer.write(wire)
    else:
        client.writer.write(wire[:cut])
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.writer.write(wire[cut:])
    answers = [await client.event() for _ in range(6)]  # five upstream echoes and one error
    [error] = [e for e in answers if e["type"] == "error"]  # the broken JSON is answered, never forwarded
    assert error["error"]["code"] == "invalid_json"
    # The smuggler is parsed (orjson keeps the last "type") and forwarded as the event it is.
    async with asyncio.timeout(5):
        while len(upstream.received) < 5:
            await asyncio.sleep(0.01)
    kinds = [json.loads(m)["type"] for m in upstream.received]
    ids = [json.loads(m).get("event_id") for m in upstream.received]
    assert kinds == ["input_audio_buffer.append"] * 3 + ["x.y", "input_audio_buffer.append"]
    assert ids == ["evt_1", "evt_2", "evt_3", None, "evt_4"]
    assert upstream.received[0] == append_event(1).decode()  # verbatim


async def test_several_upstream_frames_in_one_read_reach_the_client_in_order(connect: Connect) -> None:
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": []}}

    async def burst(ws: ServerConnection) -> None:
        # One TCP write holding deltas around an event the governor must read.
        frames = [build_frame(OP_TEXT, delta_event(n), masked=False) for n in (1, 2)]
        frames.append(build_frame(OP_TEXT, json.dumps(done).encode(), masked=False))
        frames.append(build_frame(OP_TEXT, delta_event(3), masked=False))
        ws.transport.write(b"".join(frames))
        await answer_until_closed(ws)

    client = await connect(burst)
    got = [await client.event() for _ in range(4)]
    assert [e["type"] for e in got] == ["response.output_audio.delta"] * 2 + ["response.done"] + [
        "response.output_audio.delta"
    ]
    assert [e.get("event_id") for e in got] == ["event_1", "event_2", None, "event_3"]
    assert got[0]["delta"] == AUDIO_B64


async def test_other_websocket_paths_are_left_to_the_asgi_app(wire_gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection(wire_gateway.server.host, wire_gateway.server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/not-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(HEAD_END), 5)
    assert parse_response(head[:-4]).status in (403, 404)  # Litestar has no such route
    writer.transport.abort()


async def test_a_client_leaving_during_admission_leaves_no_upstream_connection(pg_dsn: str, tenant: TenantKey) -> None:
    upstream_gone = asyncio.Event()
    accepted = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until voxgate drops the connection
        upstream_gone.set()
        writer.close()

    stall = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{stall.sockets[0].getsockname()[1]}/v1"
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, url))
    try:
        _, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {tenant.secret}\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(5):
            await accepted.wait()
        writer.transport.abort()
        async with asyncio.timeout(5):
            await upstream_gone.wait()
        assert len(gateway.services.live) == 0
    finally:
        await gateway.stop()
        stall.close()
        await stall.wait_closed()


class CapturingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class RewritingLive:
    """A LiveSession stand-in whose governor replaces every client message with two new ones."""

    session_id = "vgs_stub"
    responses_in_flight = usage_pending = opening = holding_client = False

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.awaiting_upstream = False

    def abandon_responses(self) -> Verdict:
        """The fence: upstream is read on until it answers the clear."""
        self.awaiting_upstream = True
        return Verdict(False, to_upstream=('{"type":"input_audio_buffer.clear"}',))

    def from_upstream(self, message: bytes, binary: bool = False) -> Verdict:
        if json.loads(message)["type"] == "input_audio_buffer.cleared":
            self.awaiting_upstream = False
        return Verdict(True)

    def responses_unbilled(self, cause: str) -> None:
        pass

    def client_audio(self, message: bytes) -> bool:
        return False  # nothing takes the fast path: every message goes to from_client

    def upstream_content(self, frame: bytes, start: int, end: int) -> bool:
        return False

    def from_client(self, message: bytes, binary: bool = False) -> Verdict:
        return Verdict(False, to_client=('{"type":"error"}',), to_upstream=('{"type":"rewritten"}',))

    def end(self, reason: str, detail: str | None = None) -> None:
        self.ended.append(reason)

    def attach(self, deliver: Callable[[Verdict], Awaitable[None]]) -> None:
        self.deliver = deliver

    def next_deadline_in(self) -> float | None:
        return None

    def tick(self) -> Verdict:
        return Verdict(False)

    async def aclose(self) -> None:
        pass


def frames_in(wire: bytes, *, masked: bool) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(wire):
        header = parse_header(wire, pos, expect_masked=masked)
        assert isinstance(header, FrameHeader)
        out.append((header.opcode, payload_of(wire, header)))
        pos = header.payload_end
    return out


async def test_governor_made_messages_are_masked_toward_upstream_and_plain_toward_the_client() -> None:
    client, upstream = CapturingTransport(), CapturingTransport()
    live = RewritingLive()
    relay = FastRelay(live, client, upstream, max_message_bytes=MAX_MESSAGE, on_done=lambda _: None)  # type: ignore[arg-type]
    relay.start()
    relay.client_data(build_frame(OP_TEXT, b'{"type":"session.update"}', masked=True))
    assert frames_in(upstream.sent, masked=True) == [(OP_TEXT, b'{"type":"rewritten"}')]
    assert frames_in(client.sent, masked=False) == [(OP_TEXT, b'{"type":"error"}')]
    await live.deliver(Verdict(False, to_upstream=('{"type":"response.cancel"}',)))  # between frames
    assert frames_in(upstream.sent, masked=True)[-1] == (OP_TEXT, b'{"type":"response.cancel"}')
    relay.shutdown(1001, "gateway shutting down", "gateway_shutdown")
    # The client is closed at once; upstream first gets the fence and is read until it answers it.
    assert frames_in(client.sent, masked=False)[-1] == (OP_CLOSE, b"\x03\xe9gateway shutting down")
    assert frames_in(upstream.sent, masked=True)[-1] == (OP_TEXT, b'{"type":"input_audio_buffer.clear"}')
    assert live.ended == []
    sent_to_client = client.sent
    relay.upstream_data(build_frame(OP_TEXT, b'{"type":"input_audio_buffer.cleared"}', masked=False))
    assert live.ended == ["gateway_shutdown"]
    assert frames_in(upstream.sent, masked=True)[-1] == (OP_CLOSE, b"\x03\xe8")
    assert client.sent == sent_to_client  # nothing of the fence reaches the client
    relay.client_lost(None)
    relay.upstream_lost(None)
    async with asyncio.timeout(1):
        await relay.done


USAGE = {
    "total_tokens": 30,
    "input_tokens": 10,
    "output_tokens": 20,
    "input_token_details": {"text_tokens": 10, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 5, "audio_tokens": 15},
}


async def test_frames_after_a_billed_response_done_wait_for_its_row_and_keep_their_order(
    connect: Connect, pg_pool: asyncpg.Pool
) -> None:
    response_id = f"resp_{os.urandom(6).hex()}"
    done = {
        "type": "response.done",
        "response": {"id": response_id, "status": "completed", "output": [], "usage": USAGE},
    }

    async def burst(ws: ServerConnection) -> None:
        # One TCP write: deltas, the billed response.done, more deltas and an event to inspect.
        frames = [build_frame(OP_TEXT, delta_event(n), masked=False) for n in (1, 2)]
        frames.append(build_frame(OP_TEXT, json.dumps(done).encode(), masked=False))
        frames += [build_frame(OP_TEXT, delta_event(n), masked=False) for n in (3, 4)]
        frames.append(build_frame(OP_TEXT, json.dumps({"type": "conversation.item.done"}).encode(), masked=False))
        ws.transport.write(b"".join(frames))
        await ws.send(delta_event(5).decode())  # and a later read
        await answer_until_closed(ws)

    client = await connect(burst)
    got = []
    for _ in range(7):
        got.append(await client.event())
        if got[-1]["type"] == "response.done":
            assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE response_id = $1", response_id) == 1
    assert [e["type"] for e in got] == ["response.output_audio.delta"] * 2 + ["response.done"] + [
        "response.output_audio.delta"
    ] * 2 + ["conversation.item.done", "response.output_audio.delta"]
    assert [e.get("event_id") for e in got] == ["event_1", "event_2", None, "event_3", "event_4", None, "event_5"]


async def test_an_abandoned_response_whose_done_never_comes_is_recorded_as_unbilled(
    pg_dsn: str, upstream: ScriptedUpstream, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    response_id = f"resp_{os.urandom(6).hex()}"
    received: list[dict[str, Any]] = []

    async def deaf(ws: ServerConnection) -> None:
        created = {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}
        await ws.send(json.dumps(created))
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:  # never answers the cancel
                received.append(json.loads(message))

    wait = 0.3
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, upstream.base_url, abandon_wait_seconds=wait))
    try:
        upstream.reset()
        upstream.script = deaf
        raw = await RawClient.connect(gateway, {"Authorization": f"Bearer {tenant.secret}"})
        assert (await raw.event())["type"] == "session.created"
        assert (await raw.event())["type"] == "response.created"
        ws = upstream.connections[-1]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        raw.reset()
        async with asyncio.timeout(5):
            await ws.wait_closed()
        # Upstream was told to cancel, then read for the wait, then closed: no sooner, not much later.
        assert wait <= loop.time() - t0 <= wait + 1.0
        # The cancel, then the fence (which this upstream does not answer either).
        assert [(e["type"], e.get("response_id")) for e in received] == [
            ("response.cancel", response_id),
            ("input_audio_buffer.clear", None),
        ]
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
        await gateway.settle()
        detail = await pg_pool.fetchval(
            "SELECT detail FROM audit_log WHERE tenant_id = $1 AND action = 'response_unbilled'", tenant.tenant_id
        )
        assert json.loads(detail)["response_ids"] == [response_id]
        assert await end_reason(gateway, pg_pool, tenant) == "client_closed"
    finally:
        await gateway.stop()


class BillingLive(RewritingLive):
    """A LiveSession stand-in: upstream `response.done` carries a durable future the test resolves."""

    def __init__(self) -> None:
        super().__init__()
        self.durable: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def from_upstream(self, message: bytes, binary: bool = False) -> Verdict:
        if json.loads(message)["type"] == "response.done":
            return Verdict(True, durable=self.durable)
        return super().from_upstream(message, binary)


async def test_a_held_response_done_delays_what_follows_it_and_a_drain_until_it_is_durable() -> None:
    client, upstream = CapturingTransport(), CapturingTransport()
    live = BillingLive()
    relay = FastRelay(live, client, upstream, max_message_bytes=MAX_MESSAGE, on_done=lambda _: None)  # type: ignore[arg-type]
    relay.start()
    done = build_frame(OP_TEXT, b'{"type":"response.done"}', masked=False)
    after = build_frame(OP_TEXT, b'{"type":"conversation.item.done"}', masked=False)
    relay.upstream_data(build_frame(OP_TEXT, delta_event(1), masked=False) + done + after)
    assert [json.loads(p)["type"] for _, p in frames_in(client.sent, masked=False)] == ["response.output_audio.delta"]
    assert not upstream.reading  # upstream is not read while response.done waits
    relay.upstream_data(build_frame(OP_TEXT, delta_event(2), masked=False))  # a read already under way
    relay.shutdown(1001, "gateway shutting down", "gateway_shutdown")  # a drain waits for the release
    assert live.ended == [] and len(frames_in(client.sent, masked=False)) == 1
    live.durable.set_result(None)
    await asyncio.sleep(0)
    kinds = [(op, json.loads(p)["type"] if op == OP_TEXT else p) for op, p in frames_in(client.sent, masked=False)]
    assert kinds == [
        (OP_TEXT, "response.output_audio.delta"),
        (OP_TEXT, "response.done"),
        (OP_TEXT, "conversation.item.done"),
        (OP_TEXT, "response.output_audio.delta"),
        (OP_CLOSE, b"\x03\xe9gateway shutting down"),
    ]
    assert upstream.reading and live.ended == []  # upstream is read for the fence's answer
    relay.upstream_data(build_frame(OP_TEXT, b'{"type":"input_audio_buffer.cleared"}', masked=False))
    assert live.ended == ["gateway_shutdown"]
