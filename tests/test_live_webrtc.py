"""Issue 15 §2: GPT-Live over WebRTC through voxgate, metered by the sideband voxgate holds.

`client.live.create(...)` with an aiortc peer, `base_url` at voxgate; the emulator answers
with its own peer. The cost the ledger books is checked against the usage the emulator
reported, priced in the test at the published rates.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import pytest
from openai import AsyncOpenAI, NotFoundError, PermissionDeniedError

from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthStore
from gateway.storage.policy_store import PolicyStore
from tests.support.harness import TenantKey
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer

pytestmark = [pytest.mark.e2e]

# Published GPT-Live rates (docs/pricing.md): $0.05/min active, $0.02/min standby.
ACTIVE_MICRO_USD_PER_MIN = 50_000
STANDBY_MICRO_USD_PER_MIN = 20_000
SESSION: dict[str, Any] = {
    "model": "gpt-live-1",
    "instructions": "Answer briefly.",
    "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "max_output_tokens": 4096}},
}
HS_SECRET = secrets.token_urlsafe(40)


def voice_cost(usage: dict[str, Any]) -> int:
    """The published per-minute rates over the emulator's final figures, rounded half up."""
    total = usage["active_seconds"] * ACTIVE_MICRO_USD_PER_MIN + usage["paused_seconds"] * STANDBY_MICRO_USD_PER_MIN
    return (2 * total + 60) // 120


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


@pytest.fixture
async def client(gateway, tenant: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    openai = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    yield openai
    await openai.close()


async def gateway_sideband(emulator: Any, live_id: str) -> Any:
    async def attached() -> Any:
        session = emulator.live.find(live_id)
        return session if session is not None and session.sidebands else None

    return await until(attached)


async def test_a_live_webrtc_session_is_metered_by_the_gateway_held_sideband(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    created = await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    await peer.accept(created.transport.sdp)
    assert (await peer.wait_for("session.started"))["session"]["id"] == created.session.id
    emulated = await gateway_sideband(emulator, created.session.id)
    await asyncio.sleep(1.2)
    await client.live.sessions.hangup(created.session.id)
    assert emulated.hung_up

    closed = (
        next(e for e in emulated.sidebands[0].server_events if e["type"] == "session.closed")
        if (emulated.sidebands)
        else next(e for o in emulated.detached for e in o.server_events if e["type"] == "session.closed")
    )
    session_id = await pg_pool.fetchval(
        "SELECT session_id FROM live_sessions WHERE live_session_id = $1", created.session.id
    )
    assert session_id is not None

    async def booked() -> Any:
        row = await pg_pool.fetchrow(
            "SELECT sum(d.cost_micro_usd) AS cost, max(d.active_ms) AS active_ms, bool_or(d.estimated) AS estimated, "
            "min(s.tenant_id) AS owner, min(s.transport) AS transport, min(s.intent) AS intent "
            "FROM duration_usage d JOIN realtime_sessions s ON s.id = d.session_id "
            "WHERE d.session_id = $1 AND d.kind = 'live_voice'",
            session_id,
        )
        return row if row["cost"] == voice_cost(closed["usage"]) else None

    row = await until(booked)  # the voice rows add up to the final usage at the published rates
    assert (row["owner"], row["transport"], row["intent"]) == (tenant.tenant_id, "webrtc", "live")
    assert row["estimated"] is False
    assert row["active_ms"] == closed["usage"]["active_seconds"] * 1000
    assert row["cost"] > 0

    async def ended() -> Any:
        return await pg_pool.fetchrow(
            "SELECT cost_micro_usd FROM realtime_sessions WHERE id = $1 AND ended_at IS NOT NULL", session_id
        )

    session_row = await until(ended)
    tokens = await pg_pool.fetchval(
        "SELECT COALESCE(sum(cost_micro_usd), 0) FROM live_token_usage WHERE session_id = $1", session_id
    )
    assert session_row["cost_micro_usd"] == row["cost"] + tokens


async def test_the_browser_data_channel_cannot_update_the_session_or_ask_for_responses(
    gateway, emulator, client: AsyncOpenAI, peer: ClientPeer
) -> None:
    session = SESSION | {"client": {"data_channel": {"allowed_client_events": "all"}}}
    created = await client.live.create(session=session, transport={"type": "webrtc", "sdp": await peer.offer()})
    await peer.accept(created.transport.sdp)
    await peer.wait_for("session.started")
    received = emulator.live.find(created.session.id).protocol.session
    allowed = received["client"]["data_channel"]["allowed_client_events"]
    assert "session.update" not in allowed and "response.create" not in allowed
    assert "session.close" in allowed
    peer.send("response.create", event_id="evt_sneak")
    refused = await peer.wait_for("error")
    assert refused["error"]["code"] == "event_not_allowed"
    await client.live.sessions.hangup(created.session.id)


async def test_the_policy_clamps_the_delegated_backend_and_refuses_other_models(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    policy = {"models": ["gpt-live-1", "gpt-5.5"], "max_output_tokens": 300}  # Live and backend models
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    with pytest.raises(PermissionDeniedError) as refused:
        await client.live.create(
            session=SESSION | {"model": "gpt-live-1.1"}, transport={"type": "webrtc", "sdp": await peer.offer()}
        )
    assert refused.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    created = await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    await peer.accept(created.transport.sdp)
    received = emulator.live.find(created.session.id).protocol.session
    assert received["delegation"]["responses"]["max_output_tokens"] == 300
    await client.live.sessions.hangup(created.session.id)


def browser_token(tenant: TenantKey, user: str) -> str:
    now = int(time.time())
    claims = {"tenant_id": tenant.tenant_id, "sub": user, "aud": "voxgate", "iat": now, "exp": now + 300}
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


async def test_a_browser_creates_with_its_jwt_and_only_its_user_hangs_up(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    browser = AsyncOpenAI(base_url=gateway.base_url, api_key=browser_token(tenant, "user-7"), max_retries=0)
    neighbour = AsyncOpenAI(base_url=gateway.base_url, api_key=browser_token(tenant, "user-8"), max_retries=0)
    async with browser, neighbour:
        created = await browser.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
        await peer.accept(created.transport.sdp)
        await gateway_sideband(emulator, created.session.id)
        with pytest.raises(NotFoundError):  # same tenant, another user: not theirs
            await neighbour.live.sessions.hangup(created.session.id)
        assert not emulator.live.find(created.session.id).hung_up
        await browser.live.sessions.hangup(created.session.id)  # its own session: allowed
    assert emulator.live.find(created.session.id).hung_up


async def test_a_budget_cut_ends_a_live_webrtc_session_through_the_sideband(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool, peer: ClientPeer
) -> None:
    # $0.03 a day admits, and covers the 15 s initialisation charge ($0.0125), but not the 30 s
    # window the governor reserves ahead at once: the session is closed before the browser connects.
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"budget": {"daily_usd": "0.03"}}, actor="test")
    created = await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    emulated = emulator.live.find(created.session.id)

    async def closed() -> bool:
        return bool(emulated.closed)

    await until(closed, 5)  # voxgate asked upstream to close the session (or hung it up)
    assert emulated.protocol.closed_reason == "close_requested"
    # on the sideband voxgate held: its session.close, then upstream's session.closed
    held = [*emulated.sidebands, *emulated.detached]
    assert any(e.get("type") == "session.close" for e in emulated.protocol.client_events)
    assert any(e["type"] == "session.closed" for o in held for e in o.server_events)
    session_id = await pg_pool.fetchval(
        "SELECT session_id FROM live_sessions WHERE live_session_id = $1", created.session.id
    )

    async def ended() -> Any:
        return await pg_pool.fetchrow(
            "SELECT end_reason, cost_micro_usd FROM realtime_sessions WHERE id = $1 AND ended_at IS NOT NULL",
            session_id,
        )

    row = await until(ended)
    assert row["end_reason"] == "budget_exhausted"
    assert row["cost_micro_usd"] == 15 * ACTIVE_MICRO_USD_PER_MIN // 60  # the prepaid 15 s, booked once
