"""Translation offers whose answer is lost after they were sent upstream (docs/translation.md#unconfirmed-offers).

voxgate's upstream here is a real local HTTP server in front of the emulator: it forwards the
key mint, and for the offer it reads the whole request and then never answers, resets the
connection, or (before the offer) stops listening. A lost answer may hide a live call voxgate
cannot hang up, so it is booked at its cap; a connect that failed placed nothing. Expected
costs are worked out from the published price, never from voxgate's pricing code.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.context import context_of
from gateway.webrtc.upstream_http import UpstreamHttp
from tests.conftest import REDIS_URL
from tests.support.harness import TenantKey, gateway_settings, start_gateway
from tests.support.webrtc_client import ClientPeer
from tests.test_translation_calls import cost_of_ms, leases, place

pytestmark = [pytest.mark.e2e]

CAP_S = 600  # the tenant's max_session_seconds: $0.034 / min x 10 min = $0.34
OFFERS = "/v1/realtime/translations/calls"


class OfferTrap:
    """An upstream that forwards everything to the emulator but the offer, which it reads in full
    and then answers as `mode` says: "stall" (never), "reset" (a TCP reset), "refuse" (the
    listener is closed once the key is minted, so the offer's connect is refused)."""

    def __init__(self, emulator_url: str) -> None:
        self.emulator_url = emulator_url.removesuffix("/v1")
        self.mode = "stall"
        self.offers: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._stalled: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        for writer in self._stalled:
            writer.transport.abort()
        if self.server is not None and self.server.is_serving():
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "POST" and path == OFFERS:
            self.offers.append(body)  # the whole offer reached "upstream"
            if self.mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                self._stalled.append(writer)  # never answered
            return
        forwarded = {k: v for k, v in headers.items() if k not in {"host", "content-length", "connection"}}
        async with httpx.AsyncClient() as client:
            answer = await client.request(method, self.emulator_url + path, headers=forwarded, content=body)
        out = [f"HTTP/1.1 {answer.status_code} X", f"Content-Length: {len(answer.content)}", "Connection: close"]
        out += [f"{k}: {v}" for k, v in answer.headers.items() if k.lower() in {"content-type", "location"}]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + answer.content)
        await writer.drain()
        writer.close()
        if self.mode == "refuse" and path.endswith("/client_secrets") and self.server is not None:
            self.server.close()  # the offer's new connection is refused


@pytest.fixture
async def trap(emulator: Any) -> AsyncIterator[OfferTrap]:
    trap = OfferTrap(emulator.base_url)
    await trap.start()
    yield trap
    await trap.stop()


@pytest.fixture
async def trapped_gateway(pg_dsn: str, trap: OfferTrap) -> AsyncIterator[Any]:
    gw = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, trap.url))
    # The same upstream client, waiting 1 s for an answer rather than 30 s.
    context = context_of(gw.app)
    await context.upstream.aclose()
    context.upstream = UpstreamHttp(gw.settings.upstream, timeout_s=1.0)
    yield gw
    await gw.stop()


@pytest.fixture
async def capped_tenant(tenant: TenantKey, pg_pool: asyncpg.Pool) -> TenantKey:
    policy = {"max_session_seconds": CAP_S, "max_concurrent_sessions": 5, "budget": {"daily_usd": "1.00"}}
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    return tenant


async def place_through(gw: Any, tenant: TenantKey) -> httpx.Response:
    peer = ClientPeer(speech_ms=600)
    try:
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=15) as http:
            return await place(http, tenant.secret, await peer.offer())
    finally:
        await peer.close()


async def sessions_of(pg_pool: asyncpg.Pool, tenant: TenantKey) -> list[Any]:
    return list(
        await pg_pool.fetch(
            "SELECT s.id, s.end_reason, s.ended_at IS NOT NULL AS ended, s.cost_micro_usd, s.intent, "
            "d.usage_id, d.active_ms, d.cost_micro_usd AS usage_cost, d.estimated "
            "FROM realtime_sessions s LEFT JOIN duration_usage d ON d.session_id = s.id "
            "WHERE s.tenant_id = $1",
            tenant.tenant_id,
        )
    )


async def settled_spend(gw: Any, tenant: TenantKey) -> Any:
    async def settled() -> Any:
        spend = await gw.services.enforcement.state.spend(tenant.tenant_id, time.time())
        return spend if spend.reserved_day == 0 else None

    async with asyncio.timeout(10):
        while not (found := await settled()):
            await asyncio.sleep(0.05)
    return found


def unconfirmed_count(gw: Any, failure: str) -> float:
    value = gw.services.metrics.registry.get_sample_value(
        "voxgate_translation_offers_unconfirmed_total", {"failure": failure}
    )
    return float(value or 0.0)


@pytest.mark.parametrize(("mode", "failure", "status"), [("stall", "read_timeout", 503), ("reset", "read_error", 502)])
async def test_an_offer_upstream_took_but_never_answered_is_booked_at_its_cap(
    trapped_gateway: Any,
    trap: OfferTrap,
    capped_tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    mode: str,
    failure: str,
    status: int,
) -> None:
    trap.mode = mode
    refused = await place_through(trapped_gateway, capped_tenant)
    assert refused.status_code == status, refused.text
    assert len(trap.offers) == 1 and trap.offers[0].startswith(b"v=0")  # the offer was delivered in full
    rows = await sessions_of(pg_pool, capped_tenant)
    cap_cost = cost_of_ms(CAP_S * 1000)
    assert cap_cost == 340_000
    assert len(rows) == 1
    row = rows[0]
    assert (row["usage_id"], row["active_ms"], row["usage_cost"], row["estimated"]) == (
        "unconfirmed-offer",
        CAP_S * 1000,
        cap_cost,
        True,
    )
    assert (row["ended"], row["end_reason"], row["intent"], row["cost_micro_usd"]) == (
        True,
        "upstream_error",
        "translation",
        cap_cost,
    )
    spend = await settled_spend(trapped_gateway, capped_tenant)
    assert spend.spent_day == cap_cost  # the reservation became the booking, counted once
    assert await leases(trapped_gateway, capped_tenant) == 0
    assert unconfirmed_count(trapped_gateway, failure) == 1


async def test_an_offer_whose_connect_failed_placed_nothing_and_books_nothing(
    trapped_gateway: Any, trap: OfferTrap, capped_tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    trap.mode = "refuse"
    refused = await place_through(trapped_gateway, capped_tenant)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"]["code"] == "upstream_unreachable"
    assert trap.offers == []  # nothing reached upstream
    assert await sessions_of(pg_pool, capped_tenant) == []
    spend = await settled_spend(trapped_gateway, capped_tenant)
    assert spend.spent_day == 0
    assert await leases(trapped_gateway, capped_tenant) == 0
    assert sum(unconfirmed_count(trapped_gateway, f) for f in ("read_timeout", "read_error", "other")) == 0
