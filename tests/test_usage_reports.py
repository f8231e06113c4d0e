"""Usage reports: a tenant's ledger with exact totals, and cost per UTC day and model."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg
import pytest

from gateway.ledger import sql
from gateway.ledger.reports import DailyCost, UsageRow, daily_costs, ledger_for_tenant
from gateway.storage.tenants import TenantDirectory

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def new_session(pool: asyncpg.Pool) -> tuple[str, str]:
    """A fresh tenant with one session; returns (tenant_id, session_id)."""
    tenant = await TenantDirectory(pool).create_tenant(f"reports-{secrets.token_hex(4)}")
    session_id = f"vgs_{secrets.token_hex(8)}"
    await pool.execute(
        "INSERT INTO realtime_sessions (id, tenant_id, transport, started_at) VALUES ($1, $2, 'webrtc', $3)",
        session_id,
        tenant.id,
        T0 - timedelta(days=30),
    )
    return tenant.id, session_id


async def record_response(
    pool: asyncpg.Pool, tenant_id: str, session_id: str, at: datetime, model: str, cost: int, tokens: int = 10
) -> None:
    await pool.execute(
        """
        INSERT INTO usage_ledger (
            response_id, session_id, tenant_id, model, status, occurred_at,
            input_tokens, output_tokens, total_tokens,
            input_text_tokens, input_audio_tokens, input_image_tokens,
            cached_text_tokens, cached_audio_tokens, cached_image_tokens,
            output_text_tokens, output_audio_tokens, cost_micro_usd, price_version)
        VALUES ($1, $2, $3, $4, 'completed', $5, $6::bigint, $6, $6 * 2, 0, $6, 0, 0, 0, 0, 0, $6, $7, 'test-1')
        """,
        f"resp_{secrets.token_hex(8)}",
        session_id,
        tenant_id,
        model,
        at,
        tokens,
        cost,
    )


async def test_empty_tenant_has_zero_totals(pg_pool: asyncpg.Pool) -> None:
    tenant_id, _ = await new_session(pg_pool)

    report = await ledger_for_tenant(pg_pool, tenant_id, None)

    assert report.rows == []
    assert (report.totals.responses, report.totals.cost_micro_usd) == (0, 0)
    assert (report.transcription.items, report.transcription.cost_micro_usd) == (0, 0)
    assert report.total_cost_micro_usd == 0


async def test_ledger_is_time_ordered_and_totals_are_exact(pg_pool: asyncpg.Pool) -> None:
    tenant_id, session_id = await new_session(pg_pool)
    other_tenant, other_session = await new_session(pg_pool)
    big = 2**60  # big + 3 is not exact as a float: the total must never pass through one
    await record_response(pg_pool, tenant_id, session_id, T0 + timedelta(minutes=2), "gpt-realtime", big, 7)
    await record_response(pg_pool, tenant_id, session_id, T0, "gpt-realtime-mini", 3, 5)
    await record_response(pg_pool, other_tenant, other_session, T0, "gpt-realtime", 1_000)

    report = await ledger_for_tenant(pg_pool, tenant_id, None)

    assert [row.occurred_at for row in report.rows] == [T0, T0 + timedelta(minutes=2)]
    assert {row.session_id for row in report.rows} == {session_id}
    assert report.totals.responses == 2
    assert report.totals.input_tokens == 12
    assert report.totals.output_tokens == 12
    assert report.totals.cost_micro_usd == big + 3
    assert isinstance(report.totals.cost_micro_usd, int)

    later = await ledger_for_tenant(pg_pool, tenant_id, T0 + timedelta(minutes=1))
    assert [row.model for row in later.rows] == ["gpt-realtime"]
    assert later.totals.cost_micro_usd == big


async def test_daily_costs_group_by_utc_day_and_model(pg_pool: asyncpg.Pool) -> None:
    tenant_id, session_id = await new_session(pg_pool)
    day1_late = datetime(2025, 6, 1, 23, 30, tzinfo=UTC)  # already June 2nd in Paris: still June 1st here
    for at, model, cost in [
        (datetime(2025, 6, 1, 0, 0, tzinfo=UTC), "gpt-realtime", 100),
        (day1_late, "gpt-realtime", 200),
        (day1_late, "gpt-realtime-mini", 5),
        (datetime(2025, 6, 2, 8, 0, tzinfo=UTC), "gpt-realtime", 1_000),
        (datetime(2025, 6, 3, 0, 0, tzinfo=UTC), "gpt-realtime", 99_999),  # == until: excluded
        (datetime(2025, 5, 31, 23, 59, tzinfo=UTC), "gpt-realtime", 99_999),  # before since
    ]:
        await record_response(pg_pool, tenant_id, session_id, at, model, cost)

    paris = timezone(timedelta(hours=2))
    days = await daily_costs(
        pg_pool, tenant_id, datetime(2025, 6, 1, 2, 0, tzinfo=paris), datetime(2025, 6, 3, tzinfo=UTC)
    )

    assert days == [
        DailyCost(date(2025, 6, 1), "gpt-realtime", 2, 300),
        DailyCost(date(2025, 6, 1), "gpt-realtime-mini", 1, 5),
        DailyCost(date(2025, 6, 2), "gpt-realtime", 1, 1_000),
    ]


async def test_daily_costs_can_use_the_tenant_time_index(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn, conn.transaction():
        # The test table is tiny; forbid the sequential scan to see which index the query can use.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql.DAILY_COSTS, "ten_x", T0, T0)

    assert "usage_ledger_tenant_time" in str(plan)
    assert "Index Only Scan" in str(plan)


async def test_naive_datetimes_are_refused(pg_pool: asyncpg.Pool) -> None:
    naive = datetime(2025, 6, 1)
    with pytest.raises(ValueError, match="since"):
        await ledger_for_tenant(pg_pool, "ten_x", naive)
    with pytest.raises(ValueError, match="until"):
        await daily_costs(pg_pool, "ten_x", T0, naive)


def test_a_report_row_is_a_ledger_row_without_its_tenant() -> None:
    # UsageRow is the API's typed read model of a usage_ledger row (its field order is the
    # API's): the same fields as the record the SELECT is derived from, less the tenant the
    # report is already about.
    assert sorted(f.name for f in dataclasses.fields(UsageRow)) == sorted(sql.USAGE_REPORT_COLUMNS)
