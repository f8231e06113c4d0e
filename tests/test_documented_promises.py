"""Promises of README.md and docs/ that had no test (issue F §9): each test here fails if its sentence breaks.

End-to-end tests run a real gateway in front of the emulator, on real Postgres and Redis
(tests/support/harness.py); the governor and LiveSession sentences are checked on the pure
core and on a LiveSession writing to the real ledger.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.ledger.writer import LedgerWriter, SessionStarted
from gateway.metrics import GatewayMetrics
from gateway.settings import AdminSettings, LedgerSettings
from policies.actions import Forward, ReserveBudget
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import TenantKey, gateway_settings, make_tenant, start_gateway
from tests.support.sessions import TickingClock, live_session
from tests.test_enforcement_e2e import auth, connect, next_of, set_policy, user_text

pytestmark = pytest.mark.e2e

OPENAI_ERROR_FIELDS = {"message", "type", "code", "param"}


async def refused_before_upgrade(gateway: Any, tenant: TenantKey) -> Any:
    """Open a session that must be refused: the HTTP response the handshake got instead of a 101."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)):
            pass
    return info.value.response


# -- README policy table: "starts per minute ... before the upgrade: 429 ... and retry-after" -------------


async def test_the_start_after_the_per_minute_limit_is_refused_before_the_upgrade(
    gateway, emulator, tenant, pg_pool
) -> None:
    per_minute = 3
    await set_policy(pg_pool, tenant, session_starts_per_minute=per_minute)
    before = len(emulator.sessions)
    first_start = time.time()
    for _ in range(per_minute):  # each start counts, even once the session has ended
        ws = await connect(gateway, tenant)
        await next_of(ws, "session.created")
        await ws.close()
    assert len(emulator.sessions) == before + per_minute
    response = await refused_before_upgrade(gateway, tenant)
    refused_at = time.time()
    assert response.status_code == 429
    body = json.loads(response.body)
    assert set(body["error"]) == OPENAI_ERROR_FIELDS
    assert (body["error"]["code"], body["error"]["type"]) == ("session_rate_limit_exceeded", "rate_limit_error")
    assert str(per_minute) in body["error"]["message"]
    # policies/admission.py: retry "until a start leaves the window" (60 s after the first start).
    retry_after = int(response.headers["retry-after"])
    assert 60 - (refused_at - first_start) - 1 <= retry_after <= 60
    # Refused before anything was opened upstream.
    assert len(emulator.sessions) == before + per_minute


# -- docs/close-codes.md: 429 budget_exhausted before the upgrade ------------------------------------------


async def test_a_spent_daily_budget_refuses_new_sessions_before_the_upgrade(gateway, emulator, tenant, pg_pool) -> None:
    # By hand (docs/budgets.md step 1): admission needs room for one worst-case first response,
    # 100 output tokens x 64_000_000 micro-USD per 1M (gpt-realtime audio out) = 6_400 micro-USD. The limit,
    # 7_000, leaves 600 beyond that: enough for this response's reservation (6_400 + its small input
    # estimate at 32 micro-USD per token), and less than its real cost: the emulator speaks "You said: hello",
    # 15 characters x 50 ms = 750 ms = 15 audio output tokens x 64 = 960 micro-USD (docs/emulator.md, usage rules).
    limit, need = 7_000, 6_400
    await set_policy(pg_pool, tenant, max_output_tokens=100, budget={"daily_usd": "0.007"})
    ws = await connect(gateway, tenant)
    await next_of(ws, "session.created")
    await ws.send(json.dumps({"type": "conversation.item.create", "item": user_text("hello")}))
    await ws.send(json.dumps({"type": "response.create"}))
    done = await next_of(ws, "response.done", 10)
    assert done["response"]["status"] == "completed"
    await ws.close()
    await gateway.settle()
    spent = await pg_pool.fetchval(
        "SELECT sum(cost_micro_usd) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
    )
    assert limit - need < spent <= limit
    before = len(emulator.sessions)

    response = await refused_before_upgrade(gateway, tenant)
    now = time.time()
    assert response.status_code == 429
    body = json.loads(response.body)
    assert set(body["error"]) == OPENAI_ERROR_FIELDS
    assert (body["error"]["code"], body["error"]["type"]) == ("budget_exhausted", "insufficient_quota")
    # policies/admission.py: retry-after runs until the next UTC day (seconds left in today, rounded up).
    until_midnight = 86_400 - now % 86_400
    assert until_midnight - 2 <= int(response.headers["retry-after"]) <= until_midnight + 1
    assert len(emulator.sessions) == before  # nothing was opened upstream


# -- README policy table: "voice and tool allowlists: the client event is refused with a GA error event
#    naming the policy; nothing is forwarded" -------------------------------------------------------------


async def test_a_disallowed_tool_is_refused_in_session_and_never_forwarded(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant, tools=["lookup_order"])
    before = len(emulator.sessions)
    ws = await connect(gateway, tenant)
    try:
        await next_of(ws, "session.created")
        upstream = emulator.sessions[before]
        forbidden = {"type": "function", "name": "wire_money", "parameters": {"type": "object", "properties": {}}}
        allowed = {"type": "function", "name": "lookup_order", "parameters": {"type": "object", "properties": {}}}
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "evt_bad_session",
                    "session": {"type": "realtime", "tools": [allowed, forbidden]},
                }
            )
        )
        session_error = await next_of(ws, "error")
        await ws.send(
            json.dumps({"type": "response.create", "event_id": "evt_bad_response", "response": {"tools": [forbidden]}})
        )
        response_error = await next_of(ws, "error")
        # A marker sent after both on the same socket: once upstream has it, it has everything before it.
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "evt_marker",
                    "session": {"type": "realtime", "tools": [allowed]},
                }
            )
        )
        async with asyncio.timeout(5):
            while not any(e.get("event_id") == "evt_marker" for e in upstream.client_events):
                await asyncio.sleep(0.01)
    finally:
        await ws.close()
    for event, event_id, param in (
        (session_error, "evt_bad_session", "session.tools[1].name"),
        (response_error, "evt_bad_response", "response.tools[0].name"),
    ):
        error = event["error"]
        assert (error["type"], error["code"], error["param"], error["event_id"]) == (
            "invalid_request_error",
            "tool_not_allowed",
            param,
            event_id,
        )
        assert "wire_money" in error["message"] and "'tools' list" in error["message"]  # names the policy
    forwarded = {e.get("event_id") for e in upstream.client_events}
    assert "evt_bad_session" not in forwarded and "evt_bad_response" not in forwarded
    assert not any(e["type"] == "response.create" for e in upstream.client_events)
    assert not any(
        t.get("name") == "wire_money"
        for e in upstream.client_events
        for t in (e.get("session") or e.get("response") or {}).get("tools", [])
    )


# -- docs/admin-api.md: "0 is a hard cut-over: tokens signed with the replaced secret are refused at once
#    by the replica that served the PUT, and by the others within 10 s (their config cache)." ---------------

CONFIG_CACHE_S = 10.0  # the documented bound (docs/admin-api.md, docs/webrtc.md "Config cache")


def browser_token(tenant_id: str, secret: str) -> str:
    now = int(time.time())
    claims = {"tenant_id": tenant_id, "sub": "user-1", "aud": "voxgate", "iat": now, "exp": now + 300}
    return jwt.encode(claims, secret, algorithm="HS256")


async def browser_probe(http: httpx.AsyncClient, base_url: str, token: str) -> int:
    """A route that takes browser tokens: 404 (unknown call) means the token was accepted, 401 refused."""
    response = await http.get(f"{base_url}/realtime/calls/rtc_nope", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (401, 404), response.text
    expected = "invalid_token" if response.status_code == 401 else "call_not_found"
    assert response.json()["error"]["code"] == expected
    return response.status_code


async def test_a_hard_cut_over_reaches_the_other_replica_within_its_config_cache(
    pg_dsn: str, emulator: Any, pg_pool: asyncpg.Pool
) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    admin = AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None)
    serving = await start_gateway(replace(settings, admin=admin))
    other = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        tenant = await make_tenant(pg_pool, prefix="cut")
        old_secret, new_secret = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
        old_token = browser_token(tenant.tenant_id, old_secret)
        path = f"{serving.server.http_url}/admin/v1/tenants/{tenant.tenant_id}/browser-auth"
        async with (
            httpx.AsyncClient(headers={"authorization": f"Bearer {admin_token()}"}) as api,
            httpx.AsyncClient() as http,
        ):
            assert (await api.put(path, json={"hs256_secret": old_secret})).status_code == 200
            # Both replicas accept the old key, and the other one now holds it in its cache.
            assert await browser_probe(http, serving.base_url, old_token) == 404
            assert await browser_probe(http, other.base_url, old_token) == 404
            put_at = time.monotonic()
            cut = await api.put(path, json={"hs256_secret": new_secret, "previous_valid_seconds": 0})
            assert cut.status_code == 200, cut.text
            assert await browser_probe(http, serving.base_url, old_token) == 401  # at once
            # Right after the PUT the other replica still answers from its cache: this test observes the cache.
            assert await browser_probe(http, other.base_url, old_token) == 404
            # Every request sent CONFIG_CACHE_S or more after the PUT is refused (the cache was filled before it).
            while time.monotonic() - put_at < CONFIG_CACHE_S:
                if await browser_probe(http, other.base_url, old_token) == 401:
                    break
                await asyncio.sleep(0.25)
            # Whether the loop saw the refusal or ran out, this probe starts CONFIG_CACHE_S or more after the PUT.
            assert await browser_probe(http, other.base_url, old_token) == 401
            new_token = browser_token(tenant.tenant_id, new_secret)
            assert await browser_probe(http, other.base_url, new_token) == 404
    finally:
        await other.stop()
        await serving.stop()


# -- docs/governor.md, Reservation: "Audio appends are not held: they only fill the uncommitted input buffer."

AUDIO_B64 = base64.b64encode(b"\x00\x01" * 480).decode()


def budget_governor() -> SessionGovernor:
    policy = TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10_000_000, alert_at=()))
    return SessionGovernor(
        SessionIdentity("vgs_promise0000001", "ten_promise", "gpt-realtime"),
        DEFAULT_PRICE_TABLE,
        policy,
        1_800_000_000.0,
    )


def held_reservation(gov: SessionGovernor, now: float) -> None:
    """A client response.create whose reservation is not answered yet: later decoded events wait behind it."""
    actions = gov.on_client_event({"type": "response.create"}, now)
    assert [type(a) for a in actions] == [ReserveBudget]
    assert gov.on_client_event({"type": "conversation.item.create", "item": user_text("hi")}, now + 0.01) == ()


async def test_audio_appends_pass_while_a_reservation_is_pending(pg_pool, tenant) -> None:
    gov = budget_governor()
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    live = live_session(
        gov,
        writer,
        SessionStarted(
            "vgs_promise0000001",
            tenant.tenant_id,
            tenant.key_id,
            "websocket",
            "realtime",
            "gpt-realtime",
            None,
            "test",
            time.time(),
        ),
    )
    held_reservation(gov, time.time())
    # The layout every SDK sends (type first) takes the relay's fast path; other spacing is still not decoded.
    fast = f'{{"type":"input_audio_buffer.append","audio":"{AUDIO_B64}"}}'.encode()
    assert live.client_audio(fast)
    spaced = f'{{ "type" : "input_audio_buffer.append", "audio": "{AUDIO_B64}" }}'
    assert not live.client_audio(spaced.encode())
    verdict = live.from_client(spaced)
    assert verdict.forward and not (verdict.to_client or verdict.to_upstream or verdict.close)
    assert live.client_messages == 2


def test_a_decoded_audio_append_is_not_held_behind_a_pending_reservation() -> None:
    """An append the shell must decode (here `event_id` before `type`; also any JSON escape such as
    `\\/`) reaches the governor: the sentence holds only if the governor lets it pass too."""
    gov = budget_governor()
    now = 1_800_000_000.0
    held_reservation(gov, now)
    append = {"event_id": "evt_audio_1", "type": "input_audio_buffer.append", "audio": AUDIO_B64}
    assert gov.on_client_event(append, now + 0.02) == (Forward(),)


# -- docs/governor.md, contract step 6: "call LiveSession.end(end_reason, detail) exactly once ...;
#    later calls are ignored" -----------------------------------------------------------------------------


async def test_a_session_end_is_recorded_once_and_later_calls_are_ignored(pg_pool, tenant) -> None:
    clock = iter([1_800_000_000.0 + i for i in range(100)])
    metrics = GatewayMetrics()
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    writer.start()
    session_id = "vgs_" + secrets.token_hex(8)
    try:
        gov = budget_governor()
        live = live_session(
            gov,
            writer,
            SessionStarted(
                session_id,
                tenant.tenant_id,
                tenant.key_id,
                "websocket",
                "realtime",
                "gpt-realtime",
                None,
                "test",
                next(clock),
            ),
            clock=TickingClock(lambda: next(clock)),
            metrics=metrics,
        )
        live.end("client_closed", "first")
        first = live.ended
        assert first is not None
        live.end("upstream_error", "second")
        live.end("gateway_error", "third")
        assert live.ended is first
        assert await writer.drain(10)
    finally:
        await writer.stop()
    assert writer.stats.written == 2  # SessionStarted and one SessionEnded
    row = await pg_pool.fetchrow(
        "SELECT end_reason, end_detail, ended_at FROM realtime_sessions WHERE id = $1", session_id
    )
    assert (row["end_reason"], row["end_detail"]) == ("client_closed", "first")
    assert row["ended_at"].timestamp() == first.ended_at
    ended = {
        s.labels["end_reason"]: s.value
        for m in metrics.registry.collect()
        if m.name == "voxgate_sessions_ended"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert ended == {"client_closed": 1.0}


# -- docs/close-codes.md row 1011 `gateway_error` ("a bug in voxgate"), and docs/governor.md: the governor
#    "never raises on bad input". The one live trigger of 1011 found is this breach: an upstream
#    `response.done` whose `response.id` is not a string (`[]`, `{}`) raises TypeError in the governor, and
#    the fast relay closes the client with 1011 "gateway error" (end_reason gateway_error, detail TypeError).


def test_the_governor_never_raises_on_a_response_done_with_a_malformed_id() -> None:
    metering = SessionGovernor(
        SessionIdentity("vgs_promise0000001", "ten_promise", "gpt-realtime"), DEFAULT_PRICE_TABLE, None, 1_800_000_000.0
    )
    for gov in (metering, budget_governor()):
        bad_ids: tuple[object, ...] = ([], {})
        for bad_id in bad_ids:
            done = {
                "type": "response.done",
                "event_id": "evt_1",
                "response": {
                    "id": bad_id,
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [],
                    "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
                },
            }
            # Must not raise; upstream's message is not ours to judge, so it is passed on.
            assert Forward() in gov.on_server_event(done, 1_800_000_001.0)
