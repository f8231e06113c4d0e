"""Request heads are bounded: too large gets 431, too slow gets 408, on HTTP routes and on the
Realtime upgrade alike, and requests with ordinary headers are untouched (docs/security.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
import websockets

from gateway.realtime.fastrelay.handshake import MAX_HEAD_BYTES
from gateway.realtime.fastrelay.protocol import realtime_protocol_class
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 1.0  # VOXGATE_HEADER_TIMEOUT_SECONDS for this module's gateway
SLACK_S = 0.5  # event-loop delay on a loaded 2-core machine, on top of the documented bound
UPGRADE = "/v1/realtime?model=gpt-realtime"


@pytest.fixture(scope="module")
async def gw(pg_dsn: str, emulator) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(
        gateway_settings(pg_dsn, REDIS_URL, emulator.base_url, header_timeout_seconds=HEADER_TIMEOUT_S)
    )
    yield gateway
    await gateway.stop()


def upgrade_lines(tenant: TenantKey | None = None) -> list[str]:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    return lines + ([f"Authorization: Bearer {tenant.secret}"] if tenant else [])


def head(target: str, lines: list[str]) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n\r\n").encode()


async def exchange(gw: Gateway, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read until the server closes; the status, headers and body it answered."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return parse(await reader.read())
    finally:
        writer.close()


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head_bytes, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def assert_openai_error(headers: dict[str, str], body: bytes, code: str) -> None:
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize("target", ["/healthz", UPGRADE])
async def test_a_64_kib_header_gets_431_with_an_openai_error(gw: Gateway, tenant: TenantKey, target: str) -> None:
    lines = upgrade_lines(tenant) if target == UPGRADE else []
    status, headers, body = await exchange(gw, head(target, [*lines, "X-Padding: " + "a" * 64 * 1024]))
    assert status == 431
    assert_openai_error(headers, body, "request_header_fields_too_large")
    assert headers["connection"] == "close"


async def test_a_header_over_the_limit_by_one_byte_is_refused_and_at_the_limit_is_served(gw: Gateway) -> None:
    limit = gw.settings.server.max_header_bytes
    bare = len(head("/healthz", ["Connection: close", "X-Padding: "]))
    at_limit = head("/healthz", ["Connection: close", "X-Padding: " + "a" * (limit - bare)])
    assert len(at_limit) == limit
    status, _, body = await exchange(gw, at_limit)
    assert status == 200, body
    over = head("/healthz", ["Connection: close", "X-Padding: " + "a" * (limit + 1 - bare)])
    assert len(over) == limit + 1
    status, headers, body = await exchange(gw, over)
    assert status == 431
    assert_openai_error(headers, body, "request_header_fields_too_large")


async def test_a_32_mib_header_streamed_in_is_cut_off_at_the_limit(gw: Gateway) -> None:
    """The server answers 431 as soon as the limit is passed and stops reading: the client is
    refused long before it could send 32 MiB, and the answer is not lost to a reset."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ")
    sent = 0
    chunk = b"c" * 64 * 1024
    try:
        async with asyncio.timeout(10):
            answer = asyncio.ensure_future(reader.read())
            while not answer.done() and sent < 32 * 1024 * 1024:
                writer.write(chunk)
                sent += len(chunk)
                try:
                    await writer.drain()
                except ConnectionError:
                    break
            status, headers, body = parse(await answer)
    finally:
        writer.close()
    assert status == 431
    assert_openai_error(headers, body, "request_header_fields_too_large")
    assert sent < 32 * 1024 * 1024


async def dribble(gw: Gateway, first: bytes, every_s: float = 0.1) -> tuple[float, bytes]:
    """Send `first`, then one header byte every `every_s` forever; how long until the server
    closes the connection, and what it answered."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    started = time.monotonic()

    async def slowly() -> None:
        writer.write(first)
        while True:
            await asyncio.sleep(every_s)
            writer.write(b"x")

    sender = asyncio.ensure_future(slowly())
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S * 5):
            answer = await reader.read()
        return time.monotonic() - started, answer
    finally:
        sender.cancel()
        writer.close()


@pytest.mark.parametrize("target", ["/healthz", UPGRADE])
async def test_a_slowloris_client_is_answered_408_and_disconnected_at_the_timeout(
    gw: Gateway, tenant: TenantKey, target: str
) -> None:
    lines = upgrade_lines(tenant) if target == UPGRADE else []
    first = head(target, lines)[:-2] + b"X-Slow: "  # the head is never finished
    elapsed, answer = await dribble(gw, first)
    assert HEADER_TIMEOUT_S - 0.05 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S
    status, headers, body = parse(answer)
    assert status == 408
    assert_openai_error(headers, body, "request_timeout")


async def test_a_connection_that_never_sends_is_closed_at_the_timeout(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    started = time.monotonic()
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S * 5):
            assert await reader.read() == b""
    finally:
        writer.close()
    assert HEADER_TIMEOUT_S - 0.05 <= time.monotonic() - started <= HEADER_TIMEOUT_S + SLACK_S


async def test_the_timeout_covers_the_next_request_on_a_keep_alive_connection(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(head("/healthz", []))
        status, headers, _ = parse(await reader.readuntil(b"\r\n\r\n"))
        assert status == 200
        await reader.readexactly(int(headers["content-length"]))  # the next read starts at the next answer
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
        started = time.monotonic()
        async with asyncio.timeout(HEADER_TIMEOUT_S * 5):
            answer = await reader.read()
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert parse(answer)[0] == 408
    assert HEADER_TIMEOUT_S - 0.05 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S


async def test_requests_with_a_few_kib_of_headers_work_and_outlive_the_header_timeout(
    gw: Gateway, tenant: TenantKey
) -> None:
    extra = {f"X-Trace-{i}": "t" * 1000 for i in range(6)}  # 6 KB of ordinary headers
    lines = ["Connection: close", *(f"{name}: {value}" for name, value in extra.items())]
    status, _, body = await exchange(gw, head("/healthz", lines))
    assert status == 200, body
    async with websockets.connect(
        gw.ws_url + "?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}", **extra}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await asyncio.sleep(HEADER_TIMEOUT_S + SLACK_S)  # the head timer must not touch a live session
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "hi"}}))
        async with asyncio.timeout(5):
            while json.loads(await ws.recv())["type"] != "session.updated":
                pass


class RecordingTransport:
    """The part of an asyncio transport the relay's protocol writes to before an upgrade."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_relay_answers_431_to_an_upgrade_head_over_its_own_bound() -> None:
    """uvicorn hands the relay a whole head; should one ever arrive in pieces and too long, the
    relay refuses it with the same 431 instead of dropping the connection without a word."""
    protocol_class = realtime_protocol_class(SimpleNamespace(state=SimpleNamespace()))
    protocol = protocol_class(config=None, server_state=SimpleNamespace(connections=set()), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET /v1/realtime HTTP/1.1\r\nX-Padding: ")
    assert transport.written == b""
    protocol.data_received(b"a" * MAX_HEAD_BYTES)
    assert transport.closed
    status, headers, body = parse(transport.written)
    assert status == 431
    assert_openai_error(headers, body, "request_header_fields_too_large")


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT A REQUEST\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /heal\xffthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_a_request_the_parser_refuses_gets_an_openai_error(gw: Gateway, raw: bytes) -> None:
    # Found by a hostile review: these got uvicorn's text/plain "Invalid HTTP request received.".
    status, headers, body = await exchange(gw, raw)
    assert status == 400, body
    assert_openai_error(headers, body, "invalid_request")
    assert headers["connection"] == "close"
