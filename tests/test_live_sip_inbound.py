"""Issue 15 §3 (SIP): inbound GPT-Live calls routed to a tenant by OpenAI's signed webhook.

The emulator rings a call and sends a signed `live.transport.incoming` to voxgate's
`/v1/openai/webhooks`; voxgate routes it by the operator's called-number rule to one tenant,
whose own webhook receiver (a real local HTTP server) gets it once, signed with the tenant's
secret. Forged, expired and replayed deliveries record nothing. The tenant accepts through
voxgate with the `openai` client; the session is admitted and metered on the sideband voxgate
holds. Another tenant's accept or reject is a 404 the emulator never sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI, ConflictError, NotFoundError, PermissionDeniedError, RateLimitError
from openai.types.webhooks import LiveCallIncomingWebhookEvent, LiveTransportIncomingWebhookEvent
from pydantic import TypeAdapter

from gateway.alerts.signing import new_secret, sign
from gateway.settings import AdminSettings
from gateway.sip.inbound import user_part
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import Gateway, TenantKey, gateway_settings, make_tenant, start_gateway
from tests.support.live_conformance import check
from tests.support.waiting import until
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.e2e]

OPENAI_SECRET = new_secret()
ACTIVE_MICRO_USD_PER_MIN = 50_000  # gpt-live-1, published
STANDBY_MICRO_USD_PER_MIN = 20_000
EXAMPLES = json.loads((Path(__file__).parent / "fixtures" / "live-examples.json").read_text())
ACCEPT = {"type": "live", "model": "gpt-live-1", "instructions": "You are answering an inbound support call."}


def voice_cost(usage: dict[str, Any]) -> int:
    """The published per-minute rates over the emulator's final figures, rounded half up (no prepaid time)."""
    total = usage["active_seconds"] * ACTIVE_MICRO_USD_PER_MIN + usage["paused_seconds"] * STANDBY_MICRO_USD_PER_MIN
    return (2 * total + 60) // 120


@pytest.fixture(scope="module")
async def sip_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(
        settings,
        admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None),
        upstream=replace(settings.upstream, webhook_secret=OPENAI_SECRET),
    )
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


@pytest.fixture
async def receivers() -> AsyncIterator[list[WebhookReceiver]]:
    made = [await WebhookReceiver().start(), await WebhookReceiver().start()]
    yield made
    for receiver in made:
        await receiver.stop()


async def route(gateway: Gateway, tenant: TenantKey, number: str, receiver: WebhookReceiver, secret: str) -> None:
    body = {"numbers": [number], "webhook_url": receiver.url, "webhook_secret": secret}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {admin_token()}"}) as admin:
        response = await admin.put(f"{gateway.server.http_url}/admin/v1/tenants/{tenant.tenant_id}/sip", json=body)
    assert response.status_code == 200, response.text
    assert "secret" not in response.text.replace("webhook_secret_set", "")


async def ring(emulator: Any, gateway: Gateway, to: str, **extra: Any) -> dict[str, Any]:
    root = emulator.base_url.removesuffix("/v1")
    hook = f"{gateway.server.http_url}/v1/openai/webhooks"
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{root}/_emulator/live/sip/ring", json={"url": hook, "secret": OPENAI_SECRET, "to": to, **extra}
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def post_webhook(gateway: Gateway, headers: dict[str, str], body: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"{gateway.server.http_url}/v1/openai/webhooks", headers=headers, content=body)


def client_for(gateway: Gateway, tenant: TenantKey) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)


async def sip_rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM live_sip_calls"))


def test_the_called_number_is_the_user_part_of_the_to_header() -> None:
    event = EXAMPLES["webhooks"]["live.transport.incoming"]
    to = next(h["value"] for h in event["data"]["sip_headers"] if h["name"] == "To")
    assert user_part(to) == "+18005550100"
    assert user_part('"Support" <sips:+18005550100@sip.example.com;transport=tls>;tag=abc') == "+18005550100"
    assert user_part("tel:+18005550100") == "+18005550100"
    assert user_part("mailto:someone@example.com") is None


async def test_an_inbound_call_reaches_only_its_tenant_once_and_is_accepted_and_metered(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    owner, other = await make_tenant(pg_pool, "sipa"), await make_tenant(pg_pool, "sipb")
    owner_secret, other_secret = new_secret(), new_secret()
    number = f"+1800{owner.tenant_id[-7:]}"
    await route(sip_gateway, owner, number, receivers[0], owner_secret)
    await route(sip_gateway, other, f"+1888{other.tenant_id[-7:]}", receivers[1], other_secret)

    rung = await ring(emulator, sip_gateway, number)
    live_id = rung["session_id"]
    assert rung["status"] == 200
    delivered = await receivers[0].wait_for(1)
    # The tenant unwraps it with the SDK and its own secret: signature and 3.57 types both hold.
    unwrapped = AsyncOpenAI(api_key="unused", webhook_secret=owner_secret).webhooks.unwrap(
        delivered[0].body, delivered[0].headers
    )
    assert unwrapped.type == "live.transport.incoming"
    assert unwrapped.data.session_id == live_id

    # A replay, a forged signature and an expired timestamp: nothing more is recorded or delivered.
    rows = await sip_rows(pg_pool)
    headers, body = rung["headers"], rung["body"].encode()
    replay = await post_webhook(sip_gateway, headers, body)
    assert (replay.status_code, replay.json()["status"]) == (200, "replay")
    forged = {**headers, "webhook-id": "wh_forged", "webhook-signature": sign(new_secret(), "wh_forged", 1, body)}
    assert (await post_webhook(sip_gateway, forged, body)).status_code == 401
    stale = int(headers["webhook-timestamp"]) - 3600
    expired = {**headers, "webhook-id": "wh_stale", "webhook-timestamp": str(stale)}
    expired["webhook-signature"] = sign(OPENAI_SECRET, "wh_stale", stale, body)
    assert (await post_webhook(sip_gateway, expired, body)).status_code == 401
    tampered = body.replace(live_id.encode(), b"live_someone_else")
    assert (await post_webhook(sip_gateway, headers, tampered)).status_code == 401
    seen = await pg_pool.fetchval(
        "SELECT count(*) FROM openai_webhook_events WHERE webhook_id = ANY($1::text[])", ["wh_forged", "wh_stale"]
    )
    assert seen == 0 and await sip_rows(pg_pool) == rows
    await asyncio.sleep(1.5)  # a second delivery would have been attempted by now
    assert len(receivers[0].deliveries) == 1 and receivers[1].deliveries == []

    emulated = emulator.live.find(live_id)
    async with client_for(sip_gateway, other) as intruder:
        with pytest.raises(NotFoundError):
            await intruder.live.sessions.accept(live_id, session=ACCEPT)
        with pytest.raises(NotFoundError):
            await intruder.live.sessions.reject(live_id, status_code=486)
    assert not emulated.protocol.started and emulated.rejected_with is None and not emulated.done.is_set()

    async with client_for(sip_gateway, owner) as client:
        with pytest.raises(PermissionDeniedError) as refused:  # policed like a session.start: an unpriced model
            await client.live.sessions.accept(live_id, session={**ACCEPT, "model": "gpt-live-unknown"})
        assert refused.value.code == "model_not_priced"
        assert not emulated.protocol.started
        await client.live.sessions.accept(live_id, session=ACCEPT)
        assert emulated.protocol.started
        with pytest.raises(ConflictError):  # accepted once
            await client.live.sessions.accept(live_id, session=ACCEPT)

        async def held() -> bool:
            return bool(emulated.sidebands)

        await until(held)  # voxgate holds the sideband
        await asyncio.sleep(1.2)
        await client.live.sessions.hangup(live_id)
    assert emulated.hung_up
    outlets = [*emulated.sidebands, *emulated.detached]
    closed = next(e for o in outlets for e in o.server_events if e["type"] == "session.closed")
    session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)

    async def booked() -> Any:
        row = await pg_pool.fetchrow(
            "SELECT sum(d.cost_micro_usd) AS cost, min(s.tenant_id) AS owner, bool_or(d.estimated) AS estimated "
            "FROM duration_usage d JOIN realtime_sessions s ON s.id = d.session_id "
            "WHERE d.session_id = $1 AND d.kind = 'live_voice'",
            session_id,
        )
        return row if row["cost"] == voice_cost(closed["usage"]) else None

    row = await until(booked)
    assert row["owner"] == owner.tenant_id and row["estimated"] is False
    assert await pg_pool.fetchval("SELECT state FROM live_sip_calls WHERE live_session_id = $1", live_id) == "ended"


async def test_an_unrouted_call_is_left_alone(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    rows = await sip_rows(pg_pool)
    rung = await ring(emulator, sip_gateway, "+19995550000", event_type="live.call.incoming")
    assert rung["status"] == 200
    assert rung["body"] and json.loads(rung["body"])["type"] == "live.call.incoming"
    assert await sip_rows(pg_pool) == rows
    owner = await pg_pool.fetchval("SELECT tenant_id FROM live_sessions WHERE live_session_id = $1", rung["session_id"])
    assert owner is None
    emulated = emulator.live.find(rung["session_id"])
    assert not emulated.protocol.started and emulated.rejected_with is None


async def test_the_emulators_inbound_webhooks_are_openai_3_57_events(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool
) -> None:
    types = {
        "live.transport.incoming": LiveTransportIncomingWebhookEvent,
        "live.call.incoming": LiveCallIncomingWebhookEvent,
    }
    for event_type, model in types.items():
        rung = await ring(emulator, sip_gateway, "+19995550001", event_type=event_type)
        check(TypeAdapter(model), json.loads(rung["body"]))
        # and voxgate's verifier takes the emulator's signature (it answered 2xx, the id is stored)
        assert rung["status"] == 200
        stored = await pg_pool.fetchval(
            "SELECT event_type FROM openai_webhook_events WHERE webhook_id = $1", rung["headers"]["webhook-id"]
        )
        assert stored == event_type


OUTBOUND_PASSWORD = "trunk-pass-Zq81xW"  # a test trunk's password, checked never to leak


async def test_an_outbound_sip_call_is_policed_metered_and_its_trunk_password_never_logged(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = await make_tenant(pg_pool, "sipout")
    example = EXAMPLES["live_http"]["outbound_sip_create.request"]
    trunk = {**example["transport"]["trunk"], "auth": {**example["transport"]["trunk"]["auth"]}}
    trunk["auth"]["password"] = OUTBOUND_PASSWORD
    body = {"session": example["session"], "transport": {**example["transport"], "trunk": trunk}}
    headers = {"authorization": f"Bearer {tenant.secret}"}
    sessions_before = len(emulator.live.sessions)
    async with httpx.AsyncClient(base_url=sip_gateway.base_url, headers=headers) as http:
        bad = {**body, "transport": {**body["transport"], "destination": "0800 CALL ME"}}
        refused = await http.post("/live/sessions", json=bad)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "transport.destination"
        unpriced = {**body, "session": {**body["session"], "model": "gpt-live-unknown"}}
        assert (await http.post("/live/sessions", json=unpriced)).status_code == 403
        assert len(emulator.live.sessions) == sessions_before  # nothing reached upstream
        created = await http.post("/live/sessions", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["transport"] == {"type": "sip"}
        live_id = created.json()["session"]["id"]
        emulated = emulator.live.find(live_id)
        assert emulated.protocol.outbound and emulated.headers  # placed upstream with voxgate's key

        async def held() -> bool:
            return bool(emulated.sidebands)

        await until(held)
        await asyncio.sleep(1.2)
        assert (await http.post(f"/live/sessions/{live_id}/hangup")).status_code == 200
    assert emulated.hung_up
    outlets = [*emulated.sidebands, *emulated.detached]
    answered = [e for o in outlets for e in o.server_events if e["type"] == "transport.answered"]
    assert answered  # the gateway's sideband saw the call connect
    closed = next(e for o in outlets for e in o.server_events if e["type"] == "session.closed")
    session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)

    async def booked() -> Any:
        cost = await pg_pool.fetchval(
            "SELECT sum(cost_micro_usd) FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'", session_id
        )
        return cost if cost == voice_cost(closed["usage"]) else None

    assert await until(booked) == voice_cost(closed["usage"])
    assert OUTBOUND_PASSWORD not in caplog.text


async def test_an_accept_is_admitted_under_the_models_cap_and_clamped_by_the_policy(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant = await make_tenant(pg_pool, "sipcap")
    policy = {"models": ["gpt-live-1", "gpt-5.5"], "max_output_tokens": 300}
    policy["max_concurrent_sessions_per_model"] = {"gpt-live-1": 1}
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, policy, actor="test")
    number = f"+1877{tenant.tenant_id[-7:]}"
    await route(sip_gateway, tenant, number, receivers[0], new_secret())
    state = sip_gateway.services.enforcement.state

    async def live_leases(count: int) -> bool:
        return await state.active_model_sessions(tenant.tenant_id, "gpt-live-1", time.time()) == count

    example = EXAMPLES["live_http"]["outbound_sip_create.request"]
    async with httpx.AsyncClient(
        base_url=sip_gateway.base_url, headers={"authorization": f"Bearer {tenant.secret}"}
    ) as http:
        busy = await http.post("/live/sessions", json=example)  # takes the model's only slot
        assert busy.status_code == 201, busy.text
        busy_id = busy.json()["session"]["id"]
        live_id = (await ring(emulator, sip_gateway, number))["session_id"]
        emulated = emulator.live.find(live_id)
        asked = {
            **ACCEPT,
            "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "max_output_tokens": 4096}},
        }
        async with client_for(sip_gateway, tenant) as client:
            with pytest.raises(RateLimitError) as refused:
                await client.live.sessions.accept(live_id, session=asked)
            assert refused.value.code == "concurrency_limit_exceeded"
            assert not emulated.protocol.started  # refused before any upstream call
            state_row = "SELECT state FROM live_sip_calls WHERE live_session_id = $1"
            assert await pg_pool.fetchval(state_row, live_id) == "pending"  # still ringing: it may be accepted later
            assert (await http.post(f"/live/sessions/{busy_id}/hangup")).status_code == 200

            async def freed() -> bool:
                return await live_leases(0)

            await until(freed)
            await client.live.sessions.accept(live_id, session=asked)
            assert emulated.protocol.session["delegation"]["responses"]["max_output_tokens"] == 300  # clamped

            async def counted() -> bool:
                return await live_leases(1)

            await until(counted)
            await client.live.sessions.hangup(live_id)
            await until(freed)


def signed(event: dict[str, Any], webhook_id: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event).encode()
    stamp = int(time.time())
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(stamp), "content-type": "application/json"}
    headers["webhook-signature"] = sign(OPENAI_SECRET, webhook_id, stamp, body)
    return headers, body


async def test_one_call_announced_on_both_event_types_and_on_realtime_is_routed_once(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant = await make_tenant(pg_pool, "sipdup")
    number = f"+1866{tenant.tenant_id[-7:]}"
    await route(sip_gateway, tenant, number, receivers[0], new_secret())
    call_id = f"call-{tenant.tenant_id}@example.com"
    rung = await ring(emulator, sip_gateway, number, call_id=call_id)
    assert json.loads((await post_webhook(sip_gateway, rung["headers"], rung["body"].encode())).text) == {
        "status": "replay"
    }
    # The deprecated event for the same session, and the Realtime one for the same SIP call.
    deprecated = json.loads(json.dumps(EXAMPLES["webhooks"]["live.call.incoming.deprecated"]))
    deprecated["data"]["session_id"] = rung["session_id"]
    deprecated["data"]["sip_headers"] = json.loads(rung["body"])["data"]["sip_headers"]
    realtime = json.loads(json.dumps(EXAMPLES["webhooks"]["realtime.call.incoming.same_call"]))
    realtime["data"]["sip_headers"] = deprecated["data"]["sip_headers"]
    answers = []
    for index, event in enumerate((deprecated, realtime)):
        response = await post_webhook(sip_gateway, *signed(event, f"wh_{tenant.tenant_id}_{index}"))
        answers.append((response.status_code, response.json()["status"]))
    assert answers == [(200, "duplicate"), (200, "ignored")]
    await receivers[0].wait_for(1)
    await asyncio.sleep(1.5)  # time for any second delivery
    assert len(receivers[0].deliveries) == 1
    rows = await pg_pool.fetchval("SELECT count(*) FROM live_sip_calls WHERE sip_call_id = $1", call_id)
    assert rows == 1


async def test_a_nul_in_a_signed_event_still_routes_the_call(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    # Found by a hostile review: a NUL in a caller's SIP header (untrusted metadata OpenAI passes on)
    # made Postgres refuse the event, the webhook answered 500, and OpenAI delivers again until a 2xx:
    # the call was never routed. NULs are replaced (U+FFFD) before anything is stored.
    tenant = await make_tenant(pg_pool, "sipnul")
    number = f"+1877{tenant.tenant_id[-7:]}"
    await route(sip_gateway, tenant, number, receivers[1], new_secret())
    rung = await ring(emulator, sip_gateway, number, call_id=f"nul-{tenant.tenant_id}@example.com")
    event = json.loads(rung["body"])  # delivered once by the emulator; sent again as a new session
    event["data"]["session_id"] = f"{rung['session_id']}_nul"
    event["data"]["sip_headers"].append({"name": "X-Caller\u0000Note", "value": "vip\u0000"})
    for header in event["data"]["sip_headers"]:
        if header["name"].lower() == "call-id":
            header["value"] += "\u0000"
    response = await post_webhook(sip_gateway, *signed(event, f"wh_nul_{tenant.tenant_id}"))
    assert (response.status_code, response.json()["status"]) == (200, "recorded"), response.text
    await receivers[1].wait_for(2)
    stored = await pg_pool.fetchrow(
        "SELECT sip_call_id, event FROM live_sip_calls WHERE live_session_id = $1", event["data"]["session_id"]
    )
    assert stored["sip_call_id"] == f"nul-{tenant.tenant_id}@example.com\ufffd"  # not the first call's id
    assert {"name": "X-Caller\ufffdNote", "value": "vip\ufffd"} in json.loads(stored["event"])["data"]["sip_headers"]
    # A NUL in the event type itself: acknowledged (OpenAI stops redelivering), nothing routed.
    odd = {**event, "type": "live.call\u0000.incoming"}
    response = await post_webhook(sip_gateway, *signed(odd, f"wh_nul2_{tenant.tenant_id}"))
    assert response.status_code == 200, response.text
