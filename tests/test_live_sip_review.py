"""Inbound/outbound SIP hardening: webhook timestamps, concurrent number claims, redacted trunk
passwords, the accept's failure handling, pending expiry and the delivery outbox's claim."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from openai import BadRequestError, ConflictError

from gateway.alerts.signing import new_secret, sign
from gateway.errors import GatewayError
from gateway.settings import AdminSettings
from gateway.sip.delivery import PENDING_TIMEOUT_S, RECORD_ATTEMPT, SipDelivery
from gateway.webrtc.context import context_of
from gateway.webrtc.live_sip_outbound import _redacted
from gateway.webrtc.live_sip_recovery import recover_stuck_accepts
from gateway.webrtc.live_store import LiveStore
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway
from tests.support.waiting import until
from tests.support.webhook_receiver import WebhookReceiver
from tests.test_live_sip_inbound import ACCEPT, EXAMPLES, OPENAI_SECRET, client_for, ring, route, voice_cost

pytestmark = [pytest.mark.e2e]


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
    made = [await WebhookReceiver().start()]
    yield made
    for receiver in made:
        await receiver.stop()


async def test_a_non_ascii_or_huge_webhook_timestamp_is_a_401_and_records_nothing(
    sip_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    body = json.dumps({"type": "live.transport.incoming", "data": {"session_id": "live_x"}}).encode()
    before = await pg_pool.fetchval("SELECT count(*) FROM openai_webhook_events")
    for index, stamp in enumerate(("\u00b2", "1" * 5000, "\u0661\u0667\u0660\u0660")):
        webhook_id = f"wh_stamp_{index}"
        headers = {"webhook-id": webhook_id, "webhook-signature": sign(OPENAI_SECRET, webhook_id, 1, body)}
        raw = [(name.encode(), value.encode()) for name, value in headers.items()]
        raw.append((b"webhook-timestamp", stamp.encode()))
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{sip_gateway.server.http_url}/v1/openai/webhooks", headers=raw, content=body)
        assert response.status_code == 401, (stamp[:8], response.text)
        assert response.json()["error"]["code"] == "invalid_signature"
    assert await pg_pool.fetchval("SELECT count(*) FROM openai_webhook_events") == before


async def test_two_tenants_claiming_one_number_at_once_get_one_200_and_one_409(
    sip_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    for round_ in range(5):
        first, second = await make_tenant(pg_pool, "sipra"), await make_tenant(pg_pool, "siprb")
        number = f"+1700{first.tenant_id[-7:]}{round_}"

        async def claim(tenant_id: str, http: httpx.AsyncClient, number: str = number) -> httpx.Response:
            body = {"numbers": [number], "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": new_secret()}
            return await http.put(f"{sip_gateway.server.http_url}/admin/v1/tenants/{tenant_id}/sip", json=body)

        async with httpx.AsyncClient(headers={"authorization": f"Bearer {admin_token()}"}) as http:
            answers = await asyncio.gather(claim(first.tenant_id, http), claim(second.tenant_id, http))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 409], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 409)
        assert loser.json()["error"]["code"] == "sip_number_taken"
        winner = next(t for t, a in zip((first, second), answers, strict=True) if a.status_code == 200)
        assert await pg_pool.fetchval("SELECT tenant_id FROM sip_routes WHERE called = $1", number) == winner.tenant_id


ECHOED_PASSWORD = 'trunk"pa ss/Zq&81\\xW'  # quotes, a space, a slash and a backslash: every escaped form differs


async def test_an_upstream_error_echoing_the_trunk_password_never_shows_it(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = await make_tenant(pg_pool, "sipecho")
    example = EXAMPLES["live_http"]["outbound_sip_create.request"]
    trunk = {**example["transport"]["trunk"], "provider_url": "sip:pbx@echo-error.invalid"}
    trunk["auth"] = {**example["transport"]["trunk"]["auth"], "password": ECHOED_PASSWORD}
    body = {"session": example["session"], "transport": {**example["transport"], "trunk": trunk}}
    async with httpx.AsyncClient(
        base_url=sip_gateway.base_url, headers={"authorization": f"Bearer {tenant.secret}"}
    ) as http:
        response = await http.post("/live/sessions", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "trunk refused" in message and "[redacted]" in message  # the emulator did echo it
    forms = [ECHOED_PASSWORD, json.dumps(ECHOED_PASSWORD)[1:-1], quote(ECHOED_PASSWORD, safe=""), "Zq&81"]
    for form in forms:
        assert form not in response.text
        assert form not in caplog.text
    json_escaped = json.dumps(ECHOED_PASSWORD)[1:-1]
    assert json_escaped not in json.loads(response.text)["error"]["message"]


async def _routed(gateway: Gateway, pg_pool: asyncpg.Pool, prefix: str, receiver: WebhookReceiver) -> Any:
    tenant = await make_tenant(pg_pool, prefix)
    number = f"+1855{tenant.tenant_id[-7:]}"
    await route(gateway, tenant, number, receiver, new_secret())
    return tenant, number


async def _leases(gateway: Gateway, tenant_id: str) -> int:
    return int(await gateway.services.enforcement.state.active_model_sessions(tenant_id, "gpt-live-1", time.time()))


async def test_a_ringing_session_is_invisible_to_the_generic_owner_lookup_until_accepted(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant, number = await _routed(sip_gateway, pg_pool, "sipm2", receivers[0])
    live_id = (await ring(emulator, sip_gateway, number))["session_id"]
    store = LiveStore(pg_pool)
    # What a replica of the previous release looks up before it proxies a control: nothing.
    assert await store.get(live_id) is None
    owner = await pg_pool.fetchval("SELECT tenant_id FROM live_sip_calls WHERE live_session_id = $1", live_id)
    assert owner == tenant.tenant_id
    async with client_for(sip_gateway, tenant) as client:
        await client.live.sessions.accept(live_id, session=ACCEPT)
        recorded = await store.get(live_id)
        assert recorded is not None and recorded.tenant_id == tenant.tenant_id and recorded.transport == "sip"
        assert recorded.model == "gpt-live-1" and recorded.session_id.startswith("vgs")
        await client.live.sessions.hangup(live_id)
    # a second ringing call of the tenant is rejected through the live_sip_calls ownership
    other_id = (await ring(emulator, sip_gateway, number))["session_id"]
    async with client_for(sip_gateway, tenant) as client:
        await client.live.sessions.reject(other_id, status_code=486)
    assert emulator.live.find(other_id).rejected_with == 486
    state = await pg_pool.fetchval("SELECT state FROM live_sip_calls WHERE live_session_id = $1", other_id)
    assert state == "rejected" and await store.get(other_id) is None


async def test_an_accept_upstream_refuses_is_rolled_back_to_ringing(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant, number = await _routed(sip_gateway, pg_pool, "siprb", receivers[0])
    live_id = (await ring(emulator, sip_gateway, number))["session_id"]
    emulator.live.find(live_id).end("remote_hangup")  # upstream will refuse the accept
    async with client_for(sip_gateway, tenant) as client:
        with pytest.raises(BadRequestError):  # upstream's refusal, passed on
            await client.live.sessions.accept(live_id, session=ACCEPT)
    row = await pg_pool.fetchrow("SELECT state, session_id FROM live_sip_calls WHERE live_session_id = $1", live_id)
    assert (row["state"], row["session_id"]) == ("pending", None)
    assert await LiveStore(pg_pool).get(live_id) is None
    assert await _leases(sip_gateway, tenant.tenant_id) == 0


async def test_a_failed_state_write_after_upstream_accepted_still_meters_and_is_recovered(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant, number = await _routed(sip_gateway, pg_pool, "siph1", receivers[0])
    live_id = (await ring(emulator, sip_gateway, number))["session_id"]
    emulated = emulator.live.find(live_id)
    # Postgres refuses this session's move to 'accepted' (a real error from a real trigger).
    trigger = f"refuse_{live_id.replace('-', '_')}"[:60]
    await pg_pool.execute(
        f"""CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.live_session_id = '{live_id}' AND NEW.state = 'accepted' THEN
                RAISE EXCEPTION 'refused for the test';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {trigger} BEFORE UPDATE ON live_sip_calls FOR EACH ROW EXECUTE FUNCTION {trigger}();"""
    )
    try:
        async with client_for(sip_gateway, tenant) as client:
            await client.live.sessions.accept(live_id, session=ACCEPT)  # answered: upstream took it
            assert emulated.protocol.started

            async def held() -> bool:
                return bool(emulated.sidebands)

            await until(held)  # metered although the state write failed
            state = "SELECT state FROM live_sip_calls WHERE live_session_id = $1"
            assert await pg_pool.fetchval(state, live_id) == "accepting"
            assert await _leases(sip_gateway, tenant.tenant_id) == 1
            with pytest.raises(ConflictError):  # and never accepted (admitted) twice
                await client.live.sessions.accept(live_id, session=ACCEPT)
    finally:
        await pg_pool.execute(f"DROP TRIGGER {trigger} ON live_sip_calls; DROP FUNCTION {trigger}();")
    upstream = context_of(sip_gateway.app).upstream

    async def started() -> bool:
        session_id = await pg_pool.fetchval("SELECT session_id FROM live_sip_calls WHERE live_session_id = $1", live_id)
        return bool(await pg_pool.fetchval("SELECT 1 FROM realtime_sessions WHERE id = $1", session_id))

    await until(started)
    assert await recover_stuck_accepts(sip_gateway.services, upstream, stale_s=0) == []
    assert await pg_pool.fetchval(state, live_id) == "accepted"  # settled; the call was left alone
    assert not emulated.done.is_set()
    await asyncio.sleep(1.2)
    async with client_for(sip_gateway, tenant) as client:
        await client.live.sessions.hangup(live_id)
    outlets = [*emulated.sidebands, *emulated.detached]
    closed = next(e for o in outlets for e in o.server_events if e["type"] == "session.closed")
    session_id = await pg_pool.fetchval("SELECT session_id FROM live_sessions WHERE live_session_id = $1", live_id)

    async def booked() -> Any:
        cost = await pg_pool.fetchval(
            "SELECT sum(cost_micro_usd) FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'", session_id
        )
        return cost if cost == voice_cost(closed["usage"]) else None

    assert await until(booked) == voice_cost(closed["usage"])


async def test_a_session_left_mid_accept_with_nothing_metering_it_is_hung_up(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant, number = await _routed(sip_gateway, pg_pool, "sipstk", receivers[0])
    live_id = (await ring(emulator, sip_gateway, number))["session_id"]
    emulated = emulator.live.find(live_id)
    # What a replica that died between its owner-row write and upstream's answer leaves behind.
    session_id = f"vgs_stuck_{tenant.tenant_id}"
    await pg_pool.execute(
        "UPDATE live_sip_calls SET state = 'accepting', session_id = $2, state_changed_at = now() - interval '1 hour' "
        "WHERE live_session_id = $1",
        live_id,
        session_id,
    )
    await pg_pool.execute(
        "INSERT INTO live_sessions (live_session_id, tenant_id, session_id, model, created_at, transport) "
        "VALUES ($1, $2, $3, 'gpt-live-1', now(), 'sip')",
        live_id,
        tenant.tenant_id,
        session_id,
    )
    upstream = context_of(sip_gateway.app).upstream
    assert await recover_stuck_accepts(sip_gateway.services, upstream) == [live_id]
    assert emulated.hung_up and emulated.done.is_set()
    assert await pg_pool.fetchval("SELECT state FROM live_sip_calls WHERE live_session_id = $1", live_id) == "ended"
    assert await pg_pool.fetchval("SELECT state FROM live_sessions WHERE live_session_id = $1", live_id) == "ended"
    assert await recover_stuck_accepts(sip_gateway.services, upstream) == []  # settled once


async def test_an_unanswered_call_expires_and_old_webhook_ids_are_pruned(
    sip_gateway: Gateway, emulator: Any, pg_pool: asyncpg.Pool, receivers: list[WebhookReceiver]
) -> None:
    tenant, number = await _routed(sip_gateway, pg_pool, "sipexp", receivers[0])
    live_id = (await ring(emulator, sip_gateway, number))["session_id"]
    fresh = (await ring(emulator, sip_gateway, number))["session_id"]
    await pg_pool.execute(
        "UPDATE live_sip_calls SET state_changed_at = now() - make_interval(secs => $2) WHERE live_session_id = $1",
        live_id,
        PENDING_TIMEOUT_S + 5,
    )
    await pg_pool.execute(
        "INSERT INTO openai_webhook_events (webhook_id, event_type, received_at) VALUES "
        "($1, 'x', now() - interval '8 days'), ($2, 'x', now() - interval '6 days')",
        f"wh_old_{tenant.tenant_id}",
        f"wh_recent_{tenant.tenant_id}",
    )
    delivery = SipDelivery(pg_pool, sip_gateway.settings.alerts)
    try:
        expired, pruned = await delivery.housekeep()
    finally:
        await delivery.stop()
    assert expired >= 1 and pruned >= 1
    states = dict(
        await pg_pool.fetch(
            "SELECT live_session_id, state FROM live_sip_calls WHERE live_session_id = ANY($1::text[])",
            [live_id, fresh],
        )
    )
    assert states == {live_id: "ended", fresh: "pending"}
    kept = await pg_pool.fetch(
        "SELECT webhook_id FROM openai_webhook_events WHERE webhook_id = ANY($1::text[])",
        [f"wh_old_{tenant.tenant_id}", f"wh_recent_{tenant.tenant_id}"],
    )
    assert [r["webhook_id"] for r in kept] == [f"wh_recent_{tenant.tenant_id}"]
    async with client_for(sip_gateway, tenant) as client:
        with pytest.raises(ConflictError):  # over: no longer ringing
            await client.live.sessions.accept(live_id, session=ACCEPT)
    assert not emulator.live.find(live_id).protocol.started


async def test_a_delivery_attempt_records_its_outcome_only_while_it_holds_the_claim(
    sip_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool, "sipclaim")
    live_id = f"live_claim_{tenant.tenant_id}"
    await pg_pool.execute(
        "INSERT INTO live_sip_calls (live_session_id, tenant_id, delivery_id, called, event, next_attempt_at, "
        "claimed_until) VALUES ($1, $2, $3, '+1', '{}'::jsonb, now() + interval '1 day', now() + interval '1 minute')",
        live_id,
        tenant.tenant_id,
        f"vgwh_{tenant.tenant_id}",
    )
    current = await pg_pool.fetchval("SELECT claimed_until FROM live_sip_calls WHERE live_session_id = $1", live_id)
    lapsed = current - datetime.timedelta(minutes=5)  # the claim an earlier, slower attempt held
    await pg_pool.execute(RECORD_ATTEMPT, live_id, "200", True, None, time.time(), lapsed)
    row = await pg_pool.fetchrow(
        "SELECT delivered_at, claimed_until FROM live_sip_calls WHERE live_session_id = $1", live_id
    )
    assert row["delivered_at"] is None and row["claimed_until"] == current
    await pg_pool.execute(RECORD_ATTEMPT, live_id, "200", True, None, time.time(), current)
    row = await pg_pool.fetchrow(
        "SELECT delivered_at, claimed_until FROM live_sip_calls WHERE live_session_id = $1", live_id
    )
    assert row["delivered_at"] is not None and row["claimed_until"] is None


async def test_deleting_a_tenant_deletes_its_routed_calls(pg_pool: asyncpg.Pool) -> None:
    tenant_id = f"ten_sipdel_{time.time_ns()}"
    await pg_pool.execute("INSERT INTO tenants (id, name) VALUES ($1, $1)", tenant_id)
    await pg_pool.execute(
        "INSERT INTO live_sip_calls (live_session_id, tenant_id, delivery_id, called, event) "
        "VALUES ($1, $2, $3, '+1', '{}'::jsonb)",
        f"live_del_{tenant_id}",
        tenant_id,
        f"vgwh_del_{tenant_id}",
    )
    await pg_pool.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
    assert await pg_pool.fetchval("SELECT count(*) FROM live_sip_calls WHERE tenant_id = $1", tenant_id) == 0


def test_a_redacted_upstream_error_keeps_no_form_of_the_password_anywhere() -> None:
    forms = [ECHOED_PASSWORD, json.dumps(ECHOED_PASSWORD)[1:-1], quote(ECHOED_PASSWORD, safe="")]
    original = GatewayError(400, "refused: " + " / ".join(forms), code="invalid_value", param="transport.trunk")
    redacted = _redacted(original, ECHOED_PASSWORD)
    assert redacted is not original and redacted.__cause__ is None
    shown = " ".join([str(redacted), repr(redacted.args), redacted.message, redacted.body_bytes().decode()])
    for form in forms:
        assert form not in shown
    assert shown.count("[redacted]") >= 3 and (redacted.status, redacted.param) == (400, "transport.trunk")
