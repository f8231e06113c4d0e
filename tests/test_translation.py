"""Issue 15 §6: Realtime translation through voxgate, metered by the audio the client appended.

`client.realtime.translations.connect(model="gpt-realtime-translate")` with `base_url` at
voxgate. No translation event carries usage, so the expected cost is computed here from the
audio this test sent and the published price, never from anything voxgate reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from emulator.audio import silence, tone
from gateway.storage.policy_store import PolicyStore
from gateway.translation.meter import TranslationMeter
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.support.harness import TenantKey
from tests.support.waiting import until

pytestmark = [pytest.mark.e2e]

MODEL = "gpt-realtime-translate"
PRICE_MICRO_USD_PER_MIN = 34_000  # $0.034 / min, the model page
PCM16_24K_BYTES_PER_MS = 48


def expected_cost(audio_bytes: int) -> int:
    """µUSD of `audio_bytes` of PCM16 24 kHz mono at the published rate, rounded half up."""
    numerator = audio_bytes * PRICE_MICRO_USD_PER_MIN
    denominator = PCM16_24K_BYTES_PER_MS * 60_000
    return (2 * numerator + denominator) // (2 * denominator)


@pytest.fixture
async def client(gateway, tenant: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    openai = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    yield openai
    await openai.close()


async def test_a_translation_session_is_metered_by_appended_audio(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    chunks = [tone(900), silence(700), tone(437)]  # 2,037 ms, the last not a whole 200 ms frame
    sent_bytes = sum(len(chunk) for chunk in chunks)
    async with client.realtime.translations.connect(model=MODEL) as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        update = {"audio": {"output": {"language": "es"}}}
        await connection.send({"type": "session.update", "session": update})  # type: ignore[arg-type]
        for chunk in chunks:
            append = {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            await connection.send(append)  # type: ignore[arg-type]
        await connection.send({"type": "session.close"})
        events = []
        async with asyncio.timeout(10):
            async for event in connection:
                events.append(event)
    assert events[-1].type == "session.closed"
    assert any(e.type == "session.output_audio.delta" for e in events)
    upstream = next(s for s in emulator.translations.sessions if s.id == created.session.id)
    assert upstream.protocol.appended_bytes == sent_bytes  # voxgate passed every byte on

    async def booked() -> Any:
        return await pg_pool.fetchrow(
            "SELECT d.*, s.intent, s.transport, s.model AS session_model, s.ended_at, s.cost_micro_usd AS total "
            "FROM duration_usage d JOIN realtime_sessions s ON s.id = d.session_id "
            "WHERE d.kind = 'translation' AND d.usage_id = $1 AND s.ended_at IS NOT NULL",
            created.session.id,
        )

    row = await until(booked)
    assert (row["tenant_id"], row["intent"], row["transport"], row["model"]) == (
        tenant.tenant_id,
        "translation",
        "websocket",
        MODEL,
    )
    assert row["cost_micro_usd"] == expected_cost(sent_bytes) > 0
    assert row["active_ms"] == round(sent_bytes / PCM16_24K_BYTES_PER_MS)
    assert row["estimated"] is False  # upstream's elapsed_ms agreed with the audio counted
    assert row["total"] == row["cost_micro_usd"]


async def test_a_model_the_policy_does_not_allow_is_refused_before_upstream(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"models": ["gpt-realtime"]}, actor="test")
    before = len(emulator.translations.sessions)
    with pytest.raises(InvalidStatus) as refused:
        async with client.realtime.translations.connect(model=MODEL):
            pass
    assert refused.value.response.status_code == 403
    assert len(emulator.translations.sessions) == before


async def test_a_translation_without_a_model_or_key_is_refused(gateway, tenant: TenantKey) -> None:
    url = gateway.base_url.replace("http://", "ws://", 1) + "/realtime/translations"
    with pytest.raises(InvalidStatus) as no_model:
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer vg_live_nope"}):
            pass
    assert no_model.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as no_key:
        async with websockets.connect(url + "?model=" + MODEL):
            pass
    assert no_key.value.response.status_code == 401
    # An unknown parameter is named as the `param` too (it said "model").
    with pytest.raises(InvalidStatus) as unknown:
        async with websockets.connect(url + f"?model={MODEL}&foo=1"):
            pass
    assert unknown.value.response.status_code == 400
    assert json.loads(unknown.value.response.body)["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "code": "unknown_parameter",
        "param": "foo",
    }
    async with httpx.AsyncClient() as http:
        offer = await http.post(
            f"{gateway.base_url}/realtime/translations/calls?foo=1",
            content=b"v=0",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {tenant.secret}"},
        )
    assert (offer.status_code, offer.json()["error"]["param"]) == (400, "foo"), offer.text


async def test_client_secrets_are_minted_with_the_policy_lifetime(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"expires_after_max_seconds": 120}, actor="test")
    body = {"session": {"model": MODEL, "audio": {"output": {"language": "de"}}}, "expires_after": {"seconds": 3600}}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        minted = await http.post(
            "/realtime/translations/client_secrets", json=body, headers={"Authorization": f"Bearer {tenant.secret}"}
        )
    assert minted.status_code == 200, minted.text
    assert minted.json()["value"].startswith("ek_")
    sent = emulator.translations.client_secrets[-1].request
    assert sent["expires_after"]["seconds"] == 120


def test_upstream_model_time_beyond_one_frame_raises_the_bill_and_marks_it_estimated() -> None:
    meter = TranslationMeter("vgs_x", "ten_x", MODEL)
    audio = base64.b64encode(silence(1000)).decode()
    meter.on_client({"type": "session.input_audio_buffer.append", "audio": audio})
    meter.on_upstream({"type": "session.output_audio.delta", "elapsed_ms": 1000})  # agrees: appended audio billed
    agreed = meter.book(DEFAULT_PRICE_TABLE, 0.0)
    assert agreed is not None and (agreed.active_ms, agreed.estimated) == (1000, False)
    assert agreed.cost_micro_usd == expected_cost(1000 * PCM16_24K_BYTES_PER_MS)
    meter.on_upstream({"type": "session.output_audio.delta", "elapsed_ms": 3000})  # 2 s voxgate never saw
    ahead = meter.book(DEFAULT_PRICE_TABLE, 0.0)
    assert ahead is not None and (ahead.active_ms, ahead.estimated) == (2800, True)  # upstream's less one frame
    assert ahead.cost_micro_usd == expected_cost(2800 * PCM16_24K_BYTES_PER_MS)


async def test_an_exhausted_budget_flushes_the_translation_and_closes_it_with_4003(
    gateway, emulator, client: AsyncOpenAI, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    audio = tone(600)
    async with client.realtime.translations.connect(model=MODEL) as connection:
        created = await connection.recv()
        append = {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}
        await connection.send(append)  # type: ignore[arg-type]
        carried = [
            s
            for s in gateway.services.live.sessions
            if s.live.started.intent == "translation" and s.live.started.tenant_id == tenant.tenant_id
        ]
        assert len(carried) == 1
        # What the shared state's budget broadcast tells every session of a tenant whose budget ran out.
        await carried[0].live.budget_exhausted(0.0)
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
            async with asyncio.timeout(10):
                async for _ in connection:
                    pass
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    upstream = next(s for s in emulator.translations.sessions if s.id == created.session.id)
    assert upstream.server_events[-1]["type"] == "session.closed"  # voxgate let upstream flush first

    async def booked() -> Any:
        return await pg_pool.fetchrow(
            "SELECT d.cost_micro_usd, s.end_reason FROM duration_usage d "
            "JOIN realtime_sessions s ON s.id = d.session_id WHERE d.usage_id = $1 AND s.ended_at IS NOT NULL",
            created.session.id,
        )

    row = await until(booked)
    assert row["end_reason"] == "budget_exhausted"
    assert row["cost_micro_usd"] == expected_cost(len(audio))
