"""The one upstream HTTP client of the WebRTC routes: its failures are OpenAI-shaped, its pool is bounded."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.errors import GatewayError
from gateway.settings import UpstreamSettings
from gateway.webrtc.upstream_http import UpstreamHttp


@dataclass
class SilentUpstream:
    """A TCP server that takes connections, reads requests and never answers."""

    port: int = 0
    connections: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self.release.wait()
        writer.close()

    def settings(self) -> UpstreamSettings:
        return UpstreamSettings(url=f"http://127.0.0.1:{self.port}/v1", api_key="sk-test-upstream-http")


@pytest.fixture
async def silent() -> AsyncIterator[SilentUpstream]:
    upstream = SilentUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    yield upstream
    upstream.release.set()
    server.close()
    await server.wait_closed()


async def test_a_silent_upstream_is_a_retryable_503(silent: SilentUpstream) -> None:
    client = UpstreamHttp(silent.settings(), timeout_s=0.2)
    try:
        with pytest.raises(GatewayError) as info:
            await client.mint_client_secret({"session": {"type": "realtime"}}, "vg_safety")
    finally:
        await client.aclose()
    error = info.value
    assert (error.status, error.code, error.retry_after) == (503, "upstream_timeout", 1.0)
    assert error.response_headers()["x-should-retry"] == "true"


async def test_an_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as probe:  # a port nobody listens on once this socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = UpstreamHttp(UpstreamSettings(url=f"http://127.0.0.1:{port}/v1", api_key="sk-test"), timeout_s=2.0)
    try:
        with pytest.raises(GatewayError) as info:
            await client.create_call("v=0\r\n", None, "vg_safety")
    finally:
        await client.aclose()
    assert (info.value.status, info.value.code) == (502, "upstream_unreachable")


async def test_requests_past_the_pool_wait_for_a_connection_instead_of_opening_more(silent: SilentUpstream) -> None:
    client = UpstreamHttp(silent.settings(), timeout_s=0.3, max_connections=1)
    try:
        outcomes = await asyncio.gather(
            *(client.hangup(f"rtc_{n}", "vg_safety") for n in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert outcomes == [False, False, False]  # each timed out (the pool's wait included): not confirmed
    assert silent.connections == 1
