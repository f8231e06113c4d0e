"""Helpers shared by the live-state tests: fixed times, fresh tenants, ledger rows to rebuild from."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg

from gateway.ledger import sql
from gateway.livestate import LiveStateBackend
from gateway.livestate.keys import BudgetWindows
from gateway.storage.tenants import TenantDirectory
from policies.actions import TranscriptionRecord
from tests.support.records import usage_record

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
    record = usage_record(session_id, tenant_id, f"resp_{secrets.token_hex(6)}", when, cost)
    await pool.execute(sql.INSERT_USAGE, *sql.usage_row(record))


async def add_transcription(pool: asyncpg.Pool, tenant_id: str, session_id: str, when: float, cost: int) -> None:
    record = TranscriptionRecord(
        session_id=session_id,
        tenant_id=tenant_id,
        item_id=f"item_{secrets.token_hex(6)}",
        content_index=0,
        model="gpt-4o-transcribe",
        occurred_at=when,
        usage_type="tokens",
        input_text_tokens=0,
        input_audio_tokens=0,
        output_tokens=0,
        duration_ms=0,
        cost_micro_usd=cost,
        price_version="test",
    )
    [(statement, args)] = sql.statements(record)
    await pool.execute(statement, *args)
