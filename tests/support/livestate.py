"""Helpers shared by the live-state tests: fixed times, fresh tenants, ledger rows to rebuild from."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg

from gateway.livestate import LiveStateBackend
from gateway.livestate.keys import BudgetWindows
from gateway.storage.tenants import TenantDirectory

T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()  # a Saturday noon, mid-month
TTL = 30.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def tenant() -> str:
    return f"ten_{secrets.token_hex(4)}"


async def known_tenant(state: LiveStateBackend, now: float) -> str:
    """A tenant whose counters are complete from `now` on (first touch at the month's start)."""
    t = tenant()
    w = BudgetWindows.at(now)
    assert (await state.spend(t, w.month_start)).known
    return t


async def ledger_tenant(pool: asyncpg.Pool) -> tuple[str, str]:
    """A tenant in Postgres with one session row (started long ago) to hang ledger rows on."""
    t = await TenantDirectory(pool).create_tenant(f"livestate-{secrets.token_hex(4)}")
    session_id = f"vgs_{secrets.token_hex(6)}"
    await pool.execute(
        "INSERT INTO realtime_sessions (id, tenant_id, transport, started_at) VALUES ($1, $2, 'websocket', $3)",
        session_id,
        t.id,
        datetime.fromtimestamp(T0 - 86400 * 40, UTC),
    )
    return t.id, session_id


async def add_response(pool: asyncpg.Pool, tenant_id: str, session_id: str, when: float, cost: int) -> None:
    await pool.execute(
        """INSERT INTO usage_ledger (response_id, session_id, tenant_id, model, status, occurred_at, input_tokens,
               output_tokens, total_tokens, input_text_tokens, input_audio_tokens, input_image_tokens,
               cached_text_tokens, cached_audio_tokens, cached_image_tokens, output_text_tokens,
               output_audio_tokens, cost_micro_usd, price_version)
           VALUES ($1, $2, $3, 'gpt-realtime', 'completed', $4, 1, 1, 2, 1, 0, 0, 0, 0, 0, 1, 0, $5, 'test')""",
        f"resp_{secrets.token_hex(6)}",
        session_id,
        tenant_id,
        datetime.fromtimestamp(when, UTC),
        cost,
    )


async def add_transcription(pool: asyncpg.Pool, tenant_id: str, session_id: str, when: float, cost: int) -> None:
    await pool.execute(
        """INSERT INTO transcription_usage (session_id, item_id, tenant_id, model, occurred_at, usage_type,
               cost_micro_usd, price_version)
           VALUES ($1, $2, $3, 'gpt-4o-transcribe', $4, 'tokens', $5, 'test')""",
        session_id,
        f"item_{secrets.token_hex(6)}",
        tenant_id,
        datetime.fromtimestamp(when, UTC),
        cost,
    )
