"""Read-only reports over the usage ledger: what a tenant used and what it cost.

Money is integer micro-USD throughout; every sum is computed by Postgres and cast back to
``bigint`` so it arrives as an exact ``int``. Realtime responses and input-audio
transcription are billed separately and are reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from gateway.ledger import sql


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One ``usage_ledger`` row: the usage and cost of one upstream response.

    Its fields are ``sql.USAGE_REPORT_COLUMNS`` (the ``UsageRecord`` fields but the tenant),
    with the time as a datetime; tests/test_usage_reports.py holds them equal.
    """

    response_id: str
    session_id: str
    occurred_at: datetime
    model: str
    status: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_text_tokens: int
    input_audio_tokens: int
    input_image_tokens: int
    cached_text_tokens: int
    cached_audio_tokens: int
    cached_image_tokens: int
    output_text_tokens: int
    output_audio_tokens: int
    cost_micro_usd: int
    price_version: str


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over the realtime responses in a report."""

    responses: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int


@dataclass(frozen=True, slots=True)
class TranscriptionTotals:
    """Sums over ``transcription_usage`` (input audio transcription, billed at ASR rates)."""

    items: int
    input_audio_tokens: int
    input_text_tokens: int
    output_tokens: int
    duration_ms: int
    cost_micro_usd: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    tenant_id: str
    since: datetime | None
    rows: list[UsageRow]
    totals: UsageTotals
    transcription: TranscriptionTotals

    @property
    def total_cost_micro_usd(self) -> int:
        """Responses plus transcription: everything the tenant is billed for in the window."""
        return self.totals.cost_micro_usd + self.transcription.cost_micro_usd


@dataclass(frozen=True, slots=True)
class DailyCost:
    """Realtime response cost for one tenant, one UTC day and one model."""

    day: date
    model: str
    responses: int
    cost_micro_usd: int


async def ledger_for_tenant(pool: asyncpg.Pool, tenant_id: str, since: datetime | None) -> UsageReport:
    """Every ledger row of a tenant at or after ``since`` (all if None), oldest first, with totals.

    ``since`` must be timezone-aware. Rows and totals come from one snapshot, so they agree
    even while sessions keep writing.
    """
    _require_aware(since, "since")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(sql.LEDGER_ROWS, tenant_id, since)
        totals = await conn.fetchrow(sql.LEDGER_TOTALS, tenant_id, since)
        transcription = await conn.fetchrow(sql.TRANSCRIPTION_TOTALS, tenant_id, since)
    assert totals is not None
    assert transcription is not None
    return UsageReport(
        tenant_id=tenant_id,
        since=since,
        rows=[UsageRow(**dict(row)) for row in rows],
        totals=UsageTotals(**dict(totals)),
        transcription=TranscriptionTotals(**dict(transcription)),
    )


async def daily_costs(pool: asyncpg.Pool, tenant_id: str, since: datetime, until: datetime) -> list[DailyCost]:
    """Responses and cost per UTC day and model for ``since <= occurred_at < until``.

    Served by an index-only scan of ``usage_ledger_tenant_time``. Transcription is not
    included; it has its own rates and its own totals in ``ledger_for_tenant``.
    """
    _require_aware(since, "since")
    _require_aware(until, "until")
    rows = await pool.fetch(sql.DAILY_COSTS, tenant_id, since, until)
    return [DailyCost(**dict(row)) for row in rows]


def _require_aware(moment: datetime | None, what: str) -> None:
    # A naive datetime is ambiguous (local time? UTC?): refuse rather than guess.
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
