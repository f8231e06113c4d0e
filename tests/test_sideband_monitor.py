"""The sideband monitor meters and polices a real WebRTC call (aiortc peer <-> emulator)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.ids import new_id
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.calls_cache import MemoryCallCache
from gateway.webrtc.calls_store import Call, CallStore
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.harness import UPSTREAM_KEY, TenantKey, gateway_settings, start_emulator, start_gateway
from tests.support.webrtc_client import ClientPeer

pytestmark = pytest.mark.e2e

SESSION = {"type": "realtime", "model": "gpt-realtime"}


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


async def place_call(emulator, peer: ClientPeer, pool: asyncpg.Pool, tenant: TenantKey) -> Call:
    """A call placed straight at the upstream (as if brokered) and recorded for `tenant`."""
    files = {
        "sdp": (None, await peer.offer(), "application/sdp"),
        "session": (None, json.dumps(SESSION), "application/json"),
    }
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        response = await http.post("/realtime/calls", files=files, headers={"Authorization": f"Bearer {UPSTREAM_KEY}"})
    assert response.status_code == 201, response.text
    await peer.accept(response.text)
    await peer.wait_for("session.created")
    call = Call(
        call_id=response.headers["location"].rsplit("/", 1)[1],
        tenant_id=tenant.tenant_id,
        session_id=new_id("vgs"),
        created_at=time.time(),
        model="gpt-realtime",
        safety_id="vg_test",
    )
    await CallStore(pool, MemoryCallCache()).record(call)
    return call


async def attach(gateway, emulator, call: Call) -> Any:
    assert await gateway.services.calls_monitor.attach(call)
    emulated = next(c for c in emulator.calls if c.call_id == call.call_id)
    async with asyncio.timeout(5):
        while not emulated.sidebands:
            await asyncio.sleep(0.02)
    return emulated


async def until(predicate, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_call_is_metered_through_the_sideband_exactly_once(gateway, emulator, tenant, pg_pool, peer):
    call = await place_call(emulator, peer, pg_pool, tenant)
    await attach(gateway, emulator, call)
    dones = []
    for _ in range(2):
        peer.send("response.create", response={"output_modalities": ["text"]})
        dones.append(await peer.wait_for("response.done"))

    async def both_metered() -> bool:
        rows = await pg_pool.fetch("SELECT response_id FROM usage_ledger WHERE session_id = $1", call.session_id)
        return len(rows) >= 2

    await until(both_metered)
    await asyncio.sleep(0.3)  # anything double-counted would have landed by now
    rows = await pg_pool.fetch(
        "SELECT response_id, cost_micro_usd FROM usage_ledger WHERE session_id = $1", call.session_id
    )
    assert sorted(r["response_id"] for r in rows) == sorted(d["response"]["id"] for d in dones)
    # Each costs what the usage the caller saw costs at docs/pricing.md's rates.
    assert {r["response_id"]: r["cost_micro_usd"] for r in rows} == {
        d["response"]["id"]: doc_prices.doc_cost(d["response"]["usage"]) for d in dones
    }
    assert all(r["cost_micro_usd"] > 0 for r in rows)
    session = await pg_pool.fetchrow(
        "SELECT transport, tenant_id FROM realtime_sessions WHERE id = $1", call.session_id
    )
    assert (session["transport"], session["tenant_id"]) == ("webrtc", tenant.tenant_id)


async def test_a_client_raising_max_output_tokens_is_clamped_back(gateway, emulator, tenant, pg_pool, peer):
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_output_tokens": 100}, actor="test")
    call = await place_call(emulator, peer, pg_pool, tenant)
    emulated = await attach(gateway, emulator, call)

    def ceilings() -> list[Any]:
        return [e["session"].get("max_output_tokens") for e in peer.events if e["type"] == "session.updated"]

    async def clamped_on_attach() -> bool:
        return 100 in ceilings()

    await until(clamped_on_attach, 5)  # the monitor puts the policy's ceiling on the session at once
    peer.send("session.update", session={"type": "realtime", "max_output_tokens": 4096})

    async def raised_then_clamped_back() -> bool:
        seen = ceilings()
        return 4096 in seen and seen[-1] == 100 and seen.index(4096) < len(seen) - 1

    await until(raised_then_clamped_back, 5)
    assert any(
        e["type"] == "session.update" and e["session"].get("max_output_tokens") == 100
        for e in emulated.session.client_events
    )  # sent by the sideband
    peer.send("response.create", response={"output_modalities": ["text"]})
    done = await peer.wait_for("response.done")
    assert done["response"]["usage"]["output_tokens"] <= 100


@pytest.mark.parametrize(
    ("policy", "end_reason"),
    [({"max_session_seconds": 1}, "duration_cap"), ({"budget": {"daily_usd": "0.0001"}}, "budget_exhausted")],
)
async def test_caps_and_budget_end_the_call_by_hangup(gateway, emulator, tenant, pg_pool, peer, policy, end_reason):
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    call = await place_call(emulator, peer, pg_pool, tenant)
    emulated = await attach(gateway, emulator, call)
    if end_reason == "budget_exhausted":
        peer.send("response.create", response={"output_modalities": ["text"]})
    async with asyncio.timeout(10):
        await peer.channel_closed.wait()  # hung up: the browser's data channel closes
    assert emulated.hung_up

    async def recorded() -> bool:
        reason = await pg_pool.fetchval("SELECT end_reason FROM realtime_sessions WHERE id = $1", call.session_id)
        state = await pg_pool.fetchval("SELECT state FROM realtime_calls WHERE call_id = $1", call.call_id)
        return reason == end_reason and state == "ended"

    await until(recorded)


async def test_a_call_cut_for_its_budget_has_its_last_response_metered_before_the_hangup(
    pg_dsn, tenant, pg_pool, peer
) -> None:
    # Found by a fault review: the sideband hung a call up the moment its governor cut it, so the
    # response it had cancelled never got its response.done metered when upstream answered after
    # the close (no ledger row, its reservation settled at the worst case). Now it waits (up to the
    # abandon wait) as a WebSocket session does. Paced audio: the response speaks for seconds.
    emulator = await start_emulator(pace_audio=True)
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        # One worst-case response (100 output tokens x 64 USD/1M audio = 6,400 micro-USD) fits the
        # budget; once the first response has spent some of it, the second's reservation does not, so
        # the second is cancelled and the call cut while it speaks.
        budget = {"daily_usd": "0.0064", "at_limit": "cancel_response"}
        await PolicyStore(pg_pool, {}, None).set(
            tenant.tenant_id, {"max_output_tokens": 100, "budget": budget}, actor="test"
        )
        call = await place_call(emulator, peer, pg_pool, tenant)
        emulated = await attach(gateway, emulator, call)
        peer.send("response.create")
        await peer.wait_for("response.done", timeout=15)
        # Upstream slow to answer: the cancelled response's response.done comes after the governor's
        # one-second close (docs/governor.md), which used to hang the call up without it.
        emulator.faults.event_latency_ms = 300
        peer.send("response.create")
        async with asyncio.timeout(15):
            await peer.channel_closed.wait()
        assert emulated.hung_up
        done = [e for e in emulated.session.server_events if e["type"] == "response.done"]
        assert [d["response"]["status"] for d in done] == ["completed", "cancelled"]
        assert any(e["type"] == "response.cancel" for e in emulated.session.client_events)

        async def metered() -> bool:
            rows = await pg_pool.fetch(
                "SELECT response_id, cost_micro_usd FROM usage_ledger WHERE session_id = $1", call.session_id
            )
            return sorted((r["response_id"], r["cost_micro_usd"]) for r in rows) == sorted(
                (d["response"]["id"], doc_prices.doc_cost(d["response"]["usage"])) for d in done
            )

        await until(metered)
        unbilled = await pg_pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'response_unbilled'", tenant.tenant_id
        )
        assert unbilled == 0
    finally:
        await gateway.stop()
        await emulator.stop()
