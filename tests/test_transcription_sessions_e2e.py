"""Transcription sessions through voxgate, with the official `openai` client, to the emulator:
each completed transcription is billed from its usage, and audio no transcription billed is
billed at the end by its duration, estimated, once (docs/pricing.md, "Transcription sessions").

Expected costs use docs/pricing.md's prices typed in here, applied to what the emulator reported
(its `seconds`, its tokens) or to the bytes this test sent (PCM16 24 kHz: 48,000 bytes a second).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import asyncpg
import pytest
from openai import AsyncOpenAI

from emulator.audio import tone
from tests.support.harness import TenantKey
from tests.support.observed import TRANSCRIBER, price_transcription

pytestmark = pytest.mark.e2e

PER_MINUTE = {"gpt-live-transcribe": 17_000, "gpt-realtime-whisper": 17_000}  # micro-USD: $0.017 / min
BYTES_PER_SECOND = 48_000
COMPLETED = "conversation.item.input_audio_transcription.completed"


def per_minute_cost(model: str, ms: int) -> int:
    """ms x the per-minute price / 60,000, rounded half up once."""
    return (2 * ms * PER_MINUTE[model] + 60_000) // 120_000


def session(model: str) -> dict[str, Any]:
    transcription = {"model": model}
    return {"type": "transcription", "audio": {"input": {"transcription": transcription, "turn_detection": None}}}


async def transcribe(gateway: Any, tenant: TenantKey, model: str, turns: list[int], trailing_ms: int) -> list[Any]:
    """Speak `turns` (ms each, committed), then `trailing_ms` never committed; close. The completed events."""
    client = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    events: list[Any] = []
    try:
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session=session(model))  # type: ignore[arg-type]
            async with asyncio.timeout(10):
                async for event in conn:
                    assert event.type != "error", event
                    if event.type == "session.updated":
                        break
                for ms in turns:
                    await conn.input_audio_buffer.append(audio=base64.b64encode(tone(ms)).decode())
                    await conn.input_audio_buffer.commit()
                    async for event in conn:
                        assert event.type != "error", event
                        if event.type == COMPLETED:
                            events.append(event)
                            break
            if trailing_ms:
                await conn.input_audio_buffer.append(audio=base64.b64encode(tone(trailing_ms)).decode())
    finally:
        await client.close()
    await gateway.settle()
    return events


async def ledger(pool: asyncpg.Pool, tenant: TenantKey) -> tuple[list[asyncpg.Record], int]:
    """The tenant's one session: its transcription rows (the backstop last) and its total cost."""
    async with asyncio.timeout(10):
        while (
            row := await pool.fetchrow("SELECT * FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
        ) is None or row["ended_at"] is None:
            await asyncio.sleep(0.02)
    rows = await pool.fetch(
        "SELECT * FROM transcription_usage WHERE session_id = $1 ORDER BY estimated, occurred_at", row["id"]
    )
    return rows, row["cost_micro_usd"]


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-realtime-whisper"])
async def test_committed_audio_is_billed_by_the_seconds_upstream_reported(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool, model: str
) -> None:
    [event] = await transcribe(gateway, tenant, model, turns=[2_300], trailing_ms=0)
    assert event.usage.type == "duration"
    rows, total = await ledger(pg_pool, tenant)
    [row] = rows
    expected = per_minute_cost(model, round(event.usage.seconds * 1000))
    assert (row["item_id"], row["model"], row["usage_type"], row["estimated"]) == (
        event.item_id,
        model,
        "duration",
        False,
    )
    assert row["cost_micro_usd"] == expected == total
    assert expected == 652  # 2_300 ms x 17_000 / 60_000 = 651.67


async def test_audio_never_committed_is_billed_by_its_duration_as_an_estimate(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    await transcribe(gateway, tenant, "gpt-live-transcribe", turns=[], trailing_ms=1_700)
    rows, total = await ledger(pg_pool, tenant)
    [row] = rows
    sent = len(tone(1_700))
    ms = -(-sent * 1000 // BYTES_PER_SECOND)
    assert (sent, ms) == (81_600, 1_700)
    assert (row["item_id"], row["usage_type"], row["duration_ms"], row["estimated"]) == (
        "backstop",
        "duration",
        ms,
        True,
    )
    assert row["cost_micro_usd"] == per_minute_cost("gpt-live-transcribe", ms) == total == 482  # 481.67


async def test_a_session_pays_each_transcription_and_the_uncommitted_rest_once(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    events = await transcribe(gateway, tenant, "gpt-realtime-whisper", turns=[1_000, 1_500], trailing_ms=600)
    rows, total = await ledger(pg_pool, tenant)
    *billed, backstop = rows
    assert [r["item_id"] for r in billed] == [e.item_id for e in events]
    assert [r["cost_micro_usd"] for r in billed] == [
        per_minute_cost("gpt-realtime-whisper", round(e.usage.seconds * 1000)) for e in events
    ]
    trailing_ms = -(-len(tone(600)) * 1000 // BYTES_PER_SECOND)
    assert (backstop["estimated"], backstop["duration_ms"]) == (True, trailing_ms)
    assert backstop["cost_micro_usd"] == per_minute_cost("gpt-realtime-whisper", trailing_ms)
    # 283 (1 s) + 425 (1.5 s) + 170 (0.6 s): the committed audio is not billed twice
    assert total == sum(r["cost_micro_usd"] for r in rows) == 283 + 425 + 170


async def test_a_token_billed_transcriber_is_still_priced_by_its_tokens(
    gateway: Any, emulator: Any, tenant: TenantKey, pg_pool: asyncpg.Pool
) -> None:
    [event] = await transcribe(gateway, tenant, TRANSCRIBER, turns=[1_200], trailing_ms=0)
    assert event.usage.type == "tokens"
    rows, total = await ledger(pg_pool, tenant)
    [row] = rows
    assert (row["usage_type"], row["estimated"], row["input_audio_tokens"]) == (
        "tokens",
        False,
        event.usage.input_token_details.audio_tokens,
    )
    assert row["cost_micro_usd"] == price_transcription(event.usage.model_dump()) == total
