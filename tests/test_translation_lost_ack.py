"""A translation call whose record committed but whose acknowledgement was lost (gateway/translation/calls.py).

The gateway under test reaches Postgres through a real TCP proxy. Once armed, the proxy lets
the connection that inserts the `translation_calls` row send its COMMIT, waits for Postgres to
answer it (so the transaction is durably committed), then drops that answer and resets the
gateway's side: exactly a commit whose ack is lost. voxgate must then find the row and end the
call as a hangup at that moment, not leave it to be booked at its cap by the sweep.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.harness import TenantKey, gateway_settings, start_gateway
from tests.support.webrtc_client import ClientPeer
from tests.test_translation_calls import cost_of_ms, leases, place

pytestmark = [pytest.mark.e2e]

CAP_S = 600


class LostAckProxy:
    """TCP proxy to Postgres that, when `armed`, swallows the answer to the COMMIT of the
    transaction that inserted into `translation_calls`, and resets the client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.armed = False
        self.fired = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self._writers += [client_w, server_w]
        state = {"inserted": False, "committing": False}

        async def upward() -> None:
            while data := await client_r.read(65536):
                if self.armed and b"INSERT INTO translation_calls" in data:
                    state["inserted"] = True
                if self.armed and state["inserted"] and b"COMMIT" in data:
                    state["committing"] = True
                server_w.write(data)
                await server_w.drain()

        async def downward() -> None:
            while data := await server_r.read(65536):
                if state["committing"] and self.armed:
                    assert b"COMMIT" in data  # Postgres confirmed the commit: now lose the confirmation
                    self.armed = False
                    sock = client_w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client_w.transport.abort()
                    server_w.close()
                    self.fired.set()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            client_w.transport.abort()
            server_w.transport.abort()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[tuple[LostAckProxy, str]]:
    parts = urlsplit(pg_dsn)
    proxy = LostAckProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    netloc = f"{parts.username}@127.0.0.1:{proxy.listen_port}" if parts.username else f"127.0.0.1:{proxy.listen_port}"
    yield proxy, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    await proxy.stop()


@pytest.fixture
async def proxied_gateway(proxy: tuple[LostAckProxy, str], emulator: Any) -> AsyncIterator[Any]:
    gw = await start_gateway(gateway_settings(proxy[1], REDIS_URL, emulator.base_url))
    yield gw
    await gw.stop()


async def test_a_call_whose_record_committed_but_whose_ack_was_lost_is_ended_as_a_hangup(
    proxied_gateway: Any, proxy: tuple[LostAckProxy, str], emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await PolicyStore(pg_pool, {}, None).set(
        tenant.tenant_id, {"max_session_seconds": CAP_S, "budget": {"daily_usd": "1.00"}}, actor="test"
    )
    trap, _ = proxy
    trap.armed = True
    peer = ClientPeer(speech_ms=600)
    before = time.time()
    try:
        async with httpx.AsyncClient(base_url=proxied_gateway.base_url, timeout=15) as http:
            refused = await place(http, tenant.secret, await peer.offer())
    finally:
        await peer.close()
    after = time.time()
    assert trap.fired.is_set()  # the commit went through and its ack was lost
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "call_not_recorded"

    row = await pg_pool.fetchrow(
        "SELECT c.call_id, c.state, c.end_reason, c.upstream_hung_up, d.active_ms, d.cost_micro_usd, d.estimated, "
        "s.end_reason AS session_end FROM translation_calls c "
        "JOIN duration_usage d ON d.session_id = c.session_id AND d.usage_id = c.call_id "
        "JOIN realtime_sessions s ON s.id = c.session_id WHERE c.tenant_id = $1",
        tenant.tenant_id,
    )
    assert row is not None, "the committed call was not booked"
    assert (row["state"], row["end_reason"], row["session_end"], row["estimated"]) == (
        "ended",
        "hangup",
        "client_hangup",
        False,
    )
    # Booked from the offer to the hangup, which both fall inside this test's request, not at the cap.
    assert 0 <= row["active_ms"] <= int((after - before) * 1000) + 1 < CAP_S * 1000
    assert row["cost_micro_usd"] == cost_of_ms(row["active_ms"])
    assert row["upstream_hung_up"]
    upstream = emulator.translations.find_call(row["call_id"])
    assert upstream is not None and upstream.hung_up

    async def settled() -> Any:
        spend = await proxied_gateway.services.enforcement.state.spend(tenant.tenant_id, time.time())
        return spend if spend.reserved_day == 0 else None

    async with asyncio.timeout(10):
        while not (spend := await settled()):
            await asyncio.sleep(0.05)
    assert spend.spent_day == row["cost_micro_usd"]  # settled once, to the booked cost
    assert await leases(proxied_gateway, tenant) == 0
