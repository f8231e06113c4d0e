"""Write ledgers straight into Postgres with the ledger writer's own statements (`gateway.ledger.sql`).

The costs tests fill a ledger this way (sessions with keys, end users and tags; priced responses
and transcriptions) and compare every Costs API view with sums they compute from the same
records in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from gateway.ledger.records import DurationRecord, LedgerRecord, LiveTokenRecord, SessionStarted
from gateway.ledger.sql import PHASE, statements
from policies.actions import TranscriptionRecord, UsageRecord

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Billed:
    """One billed row as the tests see it: who, when, what, how much."""

    tenant_id: str
    api_key_id: str | None
    end_user: str | None
    tags: Tags
    model: str
    occurred_at: float
    cost_micro_usd: int


def session(
    session_id: str, tenant_id: str, key_id: str | None, end_user: str | None, tags: Tags, at: float
) -> SessionStarted:
    return SessionStarted(
        session_id, tenant_id, key_id, "websocket", "realtime", "gpt-realtime", end_user, "test", at, tags
    )


def response(
    response_id: str,
    session_id: str,
    tenant_id: str,
    model: str,
    at: float,
    tokens: tuple[int, int, int, int],
    cost: int,
    version: str,
) -> UsageRecord:
    """A response with `tokens` = (input text, cached text, input audio, output audio)."""
    text_in, cached, audio_in, audio_out = tokens
    return UsageRecord(
        response_id=response_id,
        session_id=session_id,
        tenant_id=tenant_id,
        model=model,
        status="completed",
        occurred_at=at,
        input_tokens=text_in + audio_in,
        output_tokens=audio_out + 3,
        total_tokens=text_in + audio_in + audio_out + 3,
        input_text_tokens=text_in,
        input_audio_tokens=audio_in,
        input_image_tokens=0,
        cached_text_tokens=min(cached, text_in),
        cached_audio_tokens=0,
        cached_image_tokens=0,
        output_text_tokens=3,
        output_audio_tokens=audio_out,
        cost_micro_usd=cost,
        price_version=version,
    )


def transcription(
    session_id: str, tenant_id: str, item_id: str, at: float, duration_ms: int, cost: int
) -> TranscriptionRecord:
    return TranscriptionRecord(
        session_id=session_id,
        tenant_id=tenant_id,
        item_id=item_id,
        content_index=0,
        model="whisper-1",
        occurred_at=at,
        usage_type="duration",
        input_text_tokens=0,
        input_audio_tokens=0,
        output_tokens=0,
        duration_ms=duration_ms,
        cost_micro_usd=cost,
        price_version="test",
    )


def duration(
    session_id: str,
    tenant_id: str,
    kind: str,
    model: str,
    at: float,
    active_ms: int,
    standby_ms: int,
    cost: int,
    version: str,
) -> DurationRecord:
    """A `duration_usage` row: a Live session's cumulative voice time (kind `live_voice`, booked at
    the cost of its increase) or a translation's audio (`translation`)."""
    return DurationRecord(
        session_id, kind, f"{active_ms}:{standby_ms}", tenant_id, model, at, active_ms, standby_ms, False, cost, version
    )


def live_tokens(
    session_id: str,
    tenant_id: str,
    usage_id: str,
    model: str,
    at: float,
    tokens: tuple[int, int, int],
    cost: int,
    version: str,
) -> LiveTokenRecord:
    """A Live session's delegated response, `tokens` = (input incl. cached, cached input, output)."""
    return LiveTokenRecord(
        session_id, "response", usage_id, tenant_id, model, None, "completed", at, *tokens, cost, version
    )


async def write(pool: asyncpg.Pool, records: Iterable[LedgerRecord]) -> None:
    """Persist `records` in one transaction, in the writer's phase order (sessions first)."""
    work = [stmt for record in records for stmt in statements(record)]
    work.sort(key=lambda item: PHASE[item[0]])
    async with pool.acquire() as conn, conn.transaction():
        for query, args in work:
            await conn.execute(query, *args)


async def clear(pool: asyncpg.Pool) -> None:
    """Empty the ledger and its rollups (one test database, many examples)."""
    await pool.execute(
        "TRUNCATE usage_ledger, transcription_usage, duration_usage, live_token_usage, realtime_sessions,"
        " cost_rollup_15m, cost_rollup_15m_slim, cost_rollup_1h, cost_rollup_1d CASCADE"
    )
