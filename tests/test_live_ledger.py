"""A Live session's ledger rows: columns that match their records, idempotent writes per
(session, kind, usage id), replayable journal lines, and session totals that include them."""

from __future__ import annotations

import time

import asyncpg

from gateway.ledger.records import (
    DurationRecord,
    LiveTokenRecord,
    SessionEnded,
    SessionStarted,
    decode_record,
    encode_record,
)
from gateway.ledger.sql import DURATION_COLUMNS, LIVE_TOKEN_COLUMNS, statements
from gateway.session.live_call import ledger_record
from policies.live.records import LiveUsageRecord
from tests.support.harness import make_tenant


def usage(
    kind: str, usage_id: str, cost: int, session: tuple[str, str] = ("", ""), **fields: object
) -> LiveUsageRecord:
    base: dict[str, object] = {
        "active_ms": 0,
        "standby_ms": 0,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "output_tokens": 0,
        "service_tier": None,
        "status": "reported",
        "estimated": False,
    }
    return LiveUsageRecord(
        session_id=session[0],
        kind=kind,
        usage_id=usage_id,
        tenant_id=session[1],
        model="gpt-live-1",
        occurred_at=time.time(),
        cost_micro_usd=cost,
        price_version="test-1",
        **{**base, **fields},  # type: ignore[arg-type]
    )


async def test_the_live_tables_have_exactly_the_columns_of_their_records(pg_pool: asyncpg.Pool) -> None:
    for table, columns in (("duration_usage", DURATION_COLUMNS), ("live_token_usage", LIVE_TOKEN_COLUMNS)):
        rows = await pg_pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            table,
        )
        assert {row["column_name"] for row in rows} == {*columns, "recorded_at"}, table


def test_live_rows_survive_the_journal() -> None:
    voice = ledger_record(usage("live_voice", "3000:0", 2_500, active_ms=3_000))
    tokens = ledger_record(usage("response", "resp_1", 1_346, input_tokens=10, output_tokens=2, service_tier="flex"))
    assert isinstance(voice, DurationRecord) and isinstance(tokens, LiveTokenRecord)
    for record in (voice, tokens):
        assert decode_record(encode_record(record)) == record


async def test_a_replayed_row_is_written_once_and_the_session_total_counts_every_row(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    session_id = f"vgs_live_{tenant.tenant_id}"
    now = time.time()
    started = SessionStarted(session_id, tenant.tenant_id, tenant.key_id, "websocket", "live", None, None, "t", now)
    ours = (session_id, tenant.tenant_id)
    rows = [
        ledger_record(usage("live_voice", "1000:0", 833, ours, active_ms=1_000)),
        ledger_record(usage("live_voice", "2000:0", 834, ours, active_ms=2_000, estimated=True, status="estimated")),
        ledger_record(usage("response", "resp_1", 1_346, ours, input_tokens=10, output_tokens=2)),
        ledger_record(usage("decision", "ev_1", 1_020, ours, input_tokens=800, output_tokens=2)),
    ]
    async with pg_pool.acquire() as conn:
        for record in [started, *rows, *rows, SessionEnded(session_id, now + 2, "client_closed", None)]:
            for sql, args in statements(record):
                await conn.execute(sql, *args)
    assert await pg_pool.fetchval("SELECT count(*) FROM duration_usage WHERE session_id = $1", session_id) == 2
    assert await pg_pool.fetchval("SELECT count(*) FROM live_token_usage WHERE session_id = $1", session_id) == 2
    # 833 + 834 (time) + 1,346 + 1,020 (tokens) = 4,033
    assert await pg_pool.fetchval("SELECT cost_micro_usd FROM realtime_sessions WHERE id = $1", session_id) == 4_033
