"""A GPT-Live session's voice time is booked once, whoever books it (docs/live.md, failover).

Two meters of one session (a takeover while the old holder still ran, or a new holder that
resumed from what Postgres held while the dead holder's last rows were still in its journal)
each book rows with the session's cumulative time and cost. The ledger adds, per row, only what
its cumulative cost exceeds the session's rows by (under a per-session lock), so the session's
rows add up to its final cumulative usage at the published rates, exactly. Real Postgres, the
real `LedgerWriter`s of two "replicas" and the real meter.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from gateway.ledger.records import SessionEnded, SessionStarted, decode_record, encode_record
from gateway.ledger.writer import LedgerWriter
from gateway.session.live_call import ledger_record
from gateway.settings import LedgerSettings
from policies.live.meter import LiveIdentity, LiveMeter, VoiceTime
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.support.harness import make_tenant

# Published GPT-Live rates (docs/pricing.md): $0.05/min active, $0.02/min standby, rounded half up once.
ACTIVE_MICRO_USD_PER_MIN = 50_000
STANDBY_MICRO_USD_PER_MIN = 20_000


def published_cost(active_s: int, standby_s: int) -> int:
    total = active_s * ACTIVE_MICRO_USD_PER_MIN + standby_s * STANDBY_MICRO_USD_PER_MIN
    return (2 * total + 60) // 120


def report(active_s: int, standby_s: int) -> dict[str, int]:
    return {"seconds": active_s + standby_s, "active_seconds": active_s, "paused_seconds": standby_s}


async def _session(pool: asyncpg.Pool) -> tuple[str, str, list[LedgerWriter]]:
    tenant = await make_tenant(pool)
    session_id = f"vgs_live_once_{tenant.tenant_id}"
    started = SessionStarted(
        session_id, tenant.tenant_id, tenant.key_id, "webrtc", "live", "gpt-live-1", None, "t", time.time()
    )
    writers = [LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01, batch_records=4)) for _ in "ab"]
    for writer in writers:
        writer.start()
    writers[0].submit(started)
    assert await writers[0].drain(10)
    return session_id, tenant.tenant_id, writers


async def _total(pool: asyncpg.Pool, session_id: str, writers: list[LedgerWriter]) -> int:
    for writer in writers:
        assert await writer.drain(10)
    writers[0].submit(SessionEnded(session_id, time.time(), "call_ended", None))
    for writer in writers:
        assert await writer.drain(10)
        await writer.stop(timeout=5)
    voice = await pool.fetchval(
        "SELECT sum(cost_micro_usd) FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'", session_id
    )
    total = await pool.fetchval("SELECT cost_micro_usd FROM realtime_sessions WHERE id = $1", session_id)
    assert total == voice  # the session's total counts exactly its rows
    return int(voice)


async def test_two_meters_of_one_session_book_its_time_once(pg_pool: asyncpg.Pool) -> None:
    session_id, tenant_id, writers = await _session(pg_pool)
    identity = LiveIdentity(session_id, tenant_id, "gpt-live-1", "webrtc")
    now = time.time()
    # Meter A (the first holder) books the opening charge and 20 s; meter B took the session over
    # from what the ledger held then (the opening charge only) while A still ran, so both meter on.
    a = LiveMeter(identity, DEFAULT_PRICE_TABLE)
    opening = a.opening(now)
    b = LiveMeter(identity, DEFAULT_PRICE_TABLE)
    b.resume(VoiceTime(opening[0].active_ms, opening[0].standby_ms), opening[0].cost_micro_usd, now)
    a_rows = [*opening, *a.on_usage(report(18, 2), now), *a.on_usage(report(30, 6), now)]
    b_rows = [*b.on_usage(report(31, 6), now), *b.on_usage(report(41, 9), now)]
    b_rows += b.on_usage(report(47, 13), now, final=True)
    # Each meter alone believes it booked the session's whole time.
    assert sum(r.cost_micro_usd for r in a_rows) + sum(r.cost_micro_usd for r in b_rows) > published_cost(47, 13)

    async def book(writer: LedgerWriter, rows: list) -> None:  # type: ignore[type-arg]
        for row in rows:
            writer.submit(ledger_record(row))
            await asyncio.sleep(0)

    await asyncio.gather(book(writers[0], a_rows), book(writers[1], b_rows))
    assert await _total(pg_pool, session_id, writers) == published_cost(47, 13)


async def test_a_late_journal_replay_of_a_dead_holders_row_adds_nothing(pg_pool: asyncpg.Pool) -> None:
    session_id, tenant_id, writers = await _session(pg_pool)
    identity = LiveIdentity(session_id, tenant_id, "gpt-live-1", "webrtc")
    now = time.time()
    dead = LiveMeter(identity, DEFAULT_PRICE_TABLE)
    committed = [*dead.opening(now), *dead.on_usage(report(20, 0), now)]
    # Journalled, not committed when the holder died: invisible to the takeover.
    journalled = [encode_record(ledger_record(r)) for r in dead.on_usage(report(25, 5), now)]
    for row in committed:
        writers[0].submit(ledger_record(row))
    assert await writers[0].drain(10)

    held = await pg_pool.fetchrow(
        "SELECT max(active_ms) AS a, max(standby_ms) AS s, sum(cost_micro_usd)::bigint AS c FROM duration_usage "
        "WHERE session_id = $1",
        session_id,
    )
    new_holder = LiveMeter(identity, DEFAULT_PRICE_TABLE)
    new_holder.resume(VoiceTime(held["a"], held["s"]), held["c"], now)
    for row in [*new_holder.on_usage(report(27, 6), now), *new_holder.on_usage(report(33, 7), now, final=True)]:
        writers[1].submit(ledger_record(row))
    assert await writers[1].drain(10)
    # The dead holder's journal is replayed afterwards (its restart): time the new holder booked too.
    for line in journalled:
        writers[0].submit(decode_record(line))
    assert await _total(pg_pool, session_id, writers) == published_cost(33, 7)
