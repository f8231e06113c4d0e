"""The metered WebSocket proxy end to end: real SDK clients -> voxgate -> emulator, real Postgres."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from typing import Any

import asyncpg
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.storage.tenants import TenantDirectory
from tests.support import doc_prices
from tests.support.harness import UPSTREAM_KEY, TenantKey, make_tenant

pytestmark = pytest.mark.e2e


def tone_pcm16(seconds: float, rate: int = 24000, freq: float = 440.0) -> bytes:
    n = int(seconds * rate)
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))


async def voice_turn(base_url: str, key: str, *, headers: dict[str, str] | None = None) -> list[Any]:
    """One spoken turn through the official SDK; returns every response.done the client saw."""
    client = AsyncOpenAI(base_url=base_url, api_key=key, default_headers=headers or {})
    done: list[Any] = []
    try:
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            audio = tone_pcm16(1.0)
            for i in range(0, len(audio), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + 4800]).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            got_audio = False
            async with asyncio.timeout(15):
                async for event in conn:
                    assert event.type != "error", event
                    got_audio = got_audio or event.type == "response.output_audio.delta"
                    if event.type == "response.done":
                        done.append(event)
                        break
            assert got_audio
    finally:
        await client.close()
    return done


async def ledger_rows(pool: asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM usage_ledger WHERE tenant_id = $1 ORDER BY occurred_at", tenant_id)


def expected_cost(event: Any, model: str = "gpt-realtime") -> int:
    """The usage the client saw, priced with docs/pricing.md's rates (never with the code under test)."""
    return doc_prices.doc_cost(event.response.usage.model_dump(), model)


async def test_openai_sdk_voice_turn_is_metered_exactly_once(gateway, emulator, tenant: TenantKey, pg_pool) -> None:
    before = len(emulator.sessions)
    [done] = await voice_turn(gateway.base_url, tenant.secret, headers={"X-Voxgate-End-User": "alice@example.com"})
    await gateway.settle()

    [row] = await ledger_rows(pg_pool, tenant.tenant_id)
    usage = done.response.usage
    assert row["response_id"] == done.response.id
    assert row["cost_micro_usd"] == expected_cost(done) > 0
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
    )
    assert row["input_audio_tokens"] == usage.input_token_details.audio_tokens == 10  # 1 s of audio
    assert row["output_audio_tokens"] == usage.output_token_details.audio_tokens > 0
    assert row["price_version"] == doc_prices.VERSION and row["model"] == "gpt-realtime"

    session = await pg_pool.fetchrow("SELECT * FROM realtime_sessions WHERE id = $1", row["session_id"])
    assert session["end_reason"] == "client_closed" and session["ended_at"] >= session["started_at"]
    assert (session["responses"], session["cost_micro_usd"]) == (1, row["cost_micro_usd"])
    assert session["voice"] == "marin" and session["upstream_session_id"].startswith("sess_")

    # Upstream saw voxgate's key, never the tenant's, plus a hashed end-user id.
    [upstream] = emulator.sessions[before:]
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    safety = upstream.headers["openai-safety-identifier"]
    assert (
        safety == session["end_user_hash"]
        and "alice" not in safety
        and tenant.secret not in json.dumps(upstream.headers)
    )
    snapshots = await pg_pool.fetchval("SELECT count(*) FROM rate_limit_snapshots WHERE session_id = $1", session["id"])
    assert snapshots == 2  # requests + tokens, from the one rate_limits.updated


async def test_openai_agents_runner_through_the_gateway(gateway, tenant: TenantKey, pg_pool) -> None:
    from agents import set_tracing_disabled
    from agents.realtime import RealtimeAgent, RealtimeRunner

    set_tracing_disabled(True)
    runner = RealtimeRunner(RealtimeAgent(name="assistant", instructions="Be brief."))
    session = await runner.run(
        model_config={
            "url": f"{gateway.ws_url}?model=gpt-realtime",
            "api_key": tenant.secret,
            "initial_model_settings": {"model_name": "gpt-realtime"},
        }
    )
    errors: list[Any] = []
    dones: list[dict[str, Any]] = []
    async with session:
        await session.send_message("Hello agent")
        async with asyncio.timeout(15):
            async for event in session:
                if event.type == "error" or (event.type == "raw_model_event" and event.data.type == "error"):
                    errors.append(event)
                raw = event.data if event.type == "raw_model_event" else None
                if raw is not None and raw.type == "raw_server_event" and raw.data.get("type") == "response.done":
                    dones.append(raw.data)
                if event.type == "agent_end":
                    break
    await gateway.settle()
    assert errors == []
    [done] = dones
    [row] = await ledger_rows(pg_pool, tenant.tenant_id)
    assert row["response_id"] == done["response"]["id"]
    assert row["cost_micro_usd"] == doc_prices.doc_cost(done["response"]["usage"]) > 0


async def test_browser_subprotocol_auth_answers_realtime_only(gateway, tenant: TenantKey) -> None:
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime",
        subprotocols=["realtime", f"openai-insecure-api-key.{tenant.secret}"],  # type: ignore[list-item]
        compression=None,
    ) as ws:
        assert ws.subprotocol == "realtime"
        first = json.loads(await ws.recv())
        assert first["type"] == "session.created"


@pytest.mark.parametrize("how", ["missing", "wrong", "garbage", "revoked", "subprotocol-wrong"])
async def test_bad_keys_are_refused_before_the_upgrade(gateway, emulator, pg_pool, how: str) -> None:
    before = len(emulator.sessions)
    tenant = await make_tenant(pg_pool)
    headers: dict[str, str] = {}
    subprotocols: list[str] | None = None
    if how == "wrong":
        headers["Authorization"] = "Bearer vg_live_" + "A" * 43
    elif how == "garbage":
        headers["Authorization"] = "Bearer \u00e9\u00e9 not a key"
    elif how == "revoked":
        await TenantDirectory(pg_pool).revoke_key(tenant.key_id)
        headers["Authorization"] = f"Bearer {tenant.secret}"
    elif how == "subprotocol-wrong":
        subprotocols = ["realtime", "openai-insecure-api-key.vg_live_nope"]
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers=headers, subprotocols=subprotocols
        ):  # type: ignore[arg-type]
            pass
    response = info.value.response
    assert response.status_code == 401
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] in ("invalid_api_key", "missing_api_key")
    assert tenant.secret not in response.body.decode()
    assert len(emulator.sessions) == before  # nothing reached upstream


@pytest.mark.parametrize(
    ("upstream_status", "client_status", "code"),
    [(503, 503, "upstream_unavailable"), (500, 503, "upstream_unavailable"), (429, 429, None)],
)
async def test_upstream_refusal_becomes_an_openai_shaped_error_before_upgrade(
    gateway, emulator, tenant: TenantKey, pg_pool, upstream_status: int, client_status: int, code: str | None
) -> None:
    emulator.faults.connect_status = upstream_status
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ):
            pass
    response = info.value.response
    assert response.status_code == client_status
    assert int(response.headers["retry-after"]) >= 1
    body = json.loads(response.body)["error"]
    assert code is None or body["code"] == code
    assert UPSTREAM_KEY not in response.body.decode()
    # A refused session is not a $0 success in the books.
    assert await pg_pool.fetchval("SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_upstream_drop_mid_session_closes_the_client_promptly(gateway, emulator, tenant, pg_pool) -> None:
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await emulator.drop_all()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert loop.time() - started < 2.0
        assert ws.close_code == 1014
    await gateway.settle()
    reason = await pg_pool.fetchval("SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
    assert reason == "upstream_error"


async def test_malformed_client_json_gets_an_error_event_and_is_not_forwarded(gateway, emulator, tenant) -> None:
    before = len(emulator.sessions)
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send("{not json")
        await ws.send(b"\x00\x01binary")
        await ws.send("[1, 2]")
        errors: list[dict[str, Any]] = []
        while len(errors) < 3:
            event = json.loads(await ws.recv())
            if event["type"] == "error":
                errors.append(event)
        assert {e["error"]["code"] for e in errors} == {"invalid_json"}
        # The session is still alive and usable.
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        while (event := json.loads(await ws.recv()))["type"] != "input_audio_buffer.cleared":
            assert event["type"] != "error"
    upstream = emulator.sessions[before]
    assert await upstream.wait_closed(5)
    # The client's clear, then voxgate's own at the session's end (the fence, docs/relay.md): nothing else.
    assert [(e["type"], "event_id" in e) for e in upstream.client_events] == [
        ("input_audio_buffer.clear", False),
        ("input_audio_buffer.clear", True),
    ]


async def test_two_tenants_concurrent_sessions_are_metered_separately(gateway, pg_pool) -> None:
    a, b = await make_tenant(pg_pool, "a"), await make_tenant(pg_pool, "b")
    results = await asyncio.gather(*(voice_turn(gateway.base_url, t.secret) for t in (a, b, a, b)))
    await gateway.settle()
    for tenant, mine in ((a, results[0] + results[2]), (b, results[1] + results[3])):
        rows = await ledger_rows(pg_pool, tenant.tenant_id)
        assert sorted(r["response_id"] for r in rows) == sorted(d.response.id for d in mine)
        assert sum(r["cost_micro_usd"] for r in rows) == sum(expected_cost(d) for d in mine)
        sessions = await pg_pool.fetchval(
            "SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1 AND end_reason = 'client_closed'",
            tenant.tenant_id,
        )
        assert sessions == 2
