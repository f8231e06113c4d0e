"""Issue 15 §1/§3: a tenant's own sideband (`/v1/live/sessions/{id}/attach`) cannot lift its policy.

Its `session.update` is policed exactly as on the Live WebSocket: `max_output_tokens` above the
policy reaches upstream clamped (the emulator records what it received), a delegated model the
policy does not allow is refused with an `error` and never forwarded, and an event the sideband
union does not have (`session.start`) is refused too. A foreign tenant's attach is still refused
before any upstream connection. Real `openai` SDK sideband through voxgate to the emulator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from gateway.storage.policy_store import PolicyStore
from tests.support.harness import TenantKey, make_tenant
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer

pytestmark = [pytest.mark.e2e]

DELEGATED = {"type": "responses", "responses": {"model": "gpt-5.5"}}
SESSION: dict[str, Any] = {"model": "gpt-live-1", "delegation": DELEGATED}


@pytest.fixture
async def peers() -> AsyncIterator[list[ClientPeer]]:
    made: list[ClientPeer] = []
    yield made
    for peer in made:
        await peer.close()


async def created(gateway: Any, emulator: Any, tenant: TenantKey, peers: list[ClientPeer]) -> str:
    peer = ClientPeer()
    peers.append(peer)
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as owner:
        made = await owner.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})  # type: ignore[arg-type]
    await peer.accept(made.transport.sdp)

    async def held() -> bool:
        session = emulator.live.find(made.session.id)
        return session is not None and bool(session.sidebands)

    await until(held)  # voxgate's own sideband
    return made.session.id


def updates(emulator: Any, live_id: str) -> list[dict[str, Any]]:
    return [e for e in emulator.live.find(live_id).protocol.client_events if e["type"] == "session.update"]


async def next_event(sideband: Any, *types: str) -> Any:
    async with asyncio.timeout(10):
        async for event in sideband:
            if event.type in types:
                return event
    raise AssertionError(f"the sideband ended before any of {types}")


async def test_a_sideband_update_is_clamped_and_a_disallowed_model_refused(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool, peers: list[ClientPeer]
) -> None:
    policy = {"models": ["gpt-live-1", "gpt-5.5"], "max_output_tokens": 40}
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    live_id = await created(gateway, emulator, tenant, peers)
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as owner:
        async with owner.live.sideband.connect(session_id=live_id) as sideband:
            raised = {"type": "responses", "responses": {"max_output_tokens": 9999, "reasoning": {"effort": "xhigh"}}}
            await sideband.session.update(session={"delegation": raised}, event_id="ev_raise")  # type: ignore[typeddict-item]
            updated = await next_event(sideband, "session.updated", "error")
            assert updated.type == "session.updated", updated
            assert updated.session.delegation.responses.max_output_tokens == 40
            switch = {"type": "responses", "responses": {"model": "gpt-5.4-mini"}}
            await sideband.session.update(session={"delegation": switch}, event_id="ev_switch")  # type: ignore[typeddict-item]
            refused = await next_event(sideband, "error", "session.updated")
            assert refused.type == "error"
            assert (refused.error.code, refused.error.param, refused.error.client_event_id) == (
                "model_not_allowed",
                "session.delegation.responses.model",
                "ev_switch",
            )
        await owner.live.sessions.hangup(live_id)
    received = updates(emulator, live_id)
    assert len(received) == 1  # the refused switch never reached upstream
    assert received[0]["event_id"] == "ev_raise"
    assert received[0]["session"]["delegation"]["responses"] == {
        "max_output_tokens": 40,
        "reasoning": {"effort": "high"},
    }
    session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)

    async def audited() -> bool:
        rows = await pg_pool.fetch(
            "SELECT detail FROM audit_log WHERE action = 'live_clamp' AND detail->>'session_id' = $1", session_id
        )
        return any(json.loads(r["detail"]).get("via") == "attach" for r in rows)

    await until(audited)


async def test_events_outside_the_sideband_union_are_refused_and_close_passes(
    gateway: Any, emulator: Any, tenant: TenantKey, peers: list[ClientPeer]
) -> None:
    live_id = await created(gateway, emulator, tenant, peers)
    url = f"ws://{gateway.server.host}:{gateway.server.port}/v1/live/sessions/{live_id}/attach"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {tenant.secret}"}) as ws:
        before = len(emulator.live.find(live_id).protocol.client_events)
        await ws.send(json.dumps({"type": "session.start", "event_id": "ev_start", "session": {"model": "gpt-live-1"}}))
        await ws.send("not json")
        errors = []
        async with asyncio.timeout(10):
            while len(errors) < 2:
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    errors.append(event)
        assert [(e["error"]["code"], e["client_event_id"]) for e in errors] == [
            ("invalid_value", "ev_start"),
            ("invalid_json", None),
        ]
        assert len(emulator.live.find(live_id).protocol.client_events) == before  # neither was forwarded
        await ws.send(json.dumps({"type": "session.close", "event_id": "ev_close"}))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["type"] != "session.closed":
                pass
    assert emulator.live.find(live_id).protocol.client_events[-1]["event_id"] == "ev_close"


async def test_a_foreign_attach_is_refused_before_any_upstream_connection(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool, peers: list[ClientPeer]
) -> None:
    live_id = await created(gateway, emulator, tenant, peers)
    queries = list(emulator.live.find(live_id).sideband_queries)
    intruder = await make_tenant(pg_pool, "intruder-attach")
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=intruder.secret, max_retries=0) as other:
        with pytest.raises(InvalidStatus) as refused:
            async with other.live.sideband.connect(session_id=live_id):
                pass
    assert refused.value.response.status_code == 404
    assert emulator.live.find(live_id).sideband_queries == queries  # no attach reached the emulator
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as owner:
        await owner.live.sessions.hangup(live_id)
