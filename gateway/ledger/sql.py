"""Every SQL statement over the ledger's tables, writes and reads, in one place.

The ledger's tables are `realtime_sessions`, `usage_ledger`, `transcription_usage`,
`rate_limit_snapshots` and the policy decisions the sessions append to `audit_log`.
The columns of a billed row are the fields of its record (`UsageRecord`,
`TranscriptionRecord` in `policies.actions`): the column lists below are derived from those
dataclasses, never restated, and tests/test_migrations.py checks that the migrated tables have
exactly those columns. Parameters are always ``$n`` placeholders bound by asyncpg; only the
fixed column names are joined into the text, once, at import.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.ledger.records import DurationRecord, LedgerRecord, LiveTokenRecord, SessionEnded, SessionStarted
from policies.actions import AuditEvent, SessionInfoRecord, TranscriptionRecord, UsageRecord

#: The columns of one `usage_ledger` row, in the order of `UsageRecord`'s fields.
USAGE_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(UsageRecord))
#: The columns of one `transcription_usage` row, in the order of `TranscriptionRecord`'s fields.
TRANSCRIPTION_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(TranscriptionRecord))
#: The columns of one `duration_usage` row, in the order of `DurationRecord`'s fields.
DURATION_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(DurationRecord) if f.name != "cumulative_micro_usd")
#: The columns of one `live_token_usage` row, in the order of `LiveTokenRecord`'s fields.
LIVE_TOKEN_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(LiveTokenRecord))
#: What a usage report shows of each row (`gateway.ledger.reports.UsageRow`): all but the tenant.
USAGE_REPORT_COLUMNS: Final = tuple(c for c in USAGE_COLUMNS if c != "tenant_id")
#: Record fields that are Unix seconds in Python and `timestamptz` in Postgres.
_TIMES: Final = frozenset({"occurred_at"})


def _insert(table: str, columns: tuple[str, ...], conflict: str) -> str:
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)})\nVALUES ({placeholders})\nON CONFLICT {conflict} DO NOTHING\n"


# --- writes (gateway.ledger.writer) ---------------------------------------------------------

INSERT_SESSION: Final = """
INSERT INTO realtime_sessions
    (id, tenant_id, api_key_id, transport, intent, model, end_user_hash, gateway_instance, started_at, tags)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
ON CONFLICT (id) DO NOTHING
"""

UPDATE_SESSION_INFO: Final = """
UPDATE realtime_sessions
SET model = COALESCE($2, model), voice = COALESCE($3, voice),
    upstream_session_id = COALESCE($4, upstream_session_id)
WHERE id = $1
"""

# Idempotent by primary key: a batch retried after an ambiguous failure never double-bills.
INSERT_USAGE: Final = _insert("usage_ledger", USAGE_COLUMNS, "(response_id)")

INSERT_TRANSCRIPTION: Final = _insert(
    "transcription_usage", TRANSCRIPTION_COLUMNS, "(session_id, item_id, content_index)"
)

INSERT_DURATION: Final = _insert("duration_usage", DURATION_COLUMNS, "(session_id, kind, usage_id)")

# A GPT-Live voice row books what the session's cumulative cost ($11) adds to its rows' sum, under a
# per-session lock (`LOCK_SESSION`, same transaction): two meters of one session (a takeover) or a
# late journal replay never book the same time twice. A row whose time is covered is not written.
INSERT_LIVE_VOICE: Final = f"""
INSERT INTO duration_usage ({", ".join(DURATION_COLUMNS)})
SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::timestamptz, $7::bigint, $8::bigint, $9::boolean,
       greatest(0, $11::bigint - b.booked), $10::text
FROM (SELECT coalesce(sum(cost_micro_usd), 0)::bigint AS booked
      FROM duration_usage WHERE session_id = $1 AND kind = $2) b
WHERE NOT EXISTS (SELECT 1 FROM duration_usage e
                  WHERE e.session_id = $1 AND e.kind = $2 AND e.active_ms >= $7 AND e.standby_ms >= $8)
ON CONFLICT (session_id, kind, usage_id) DO NOTHING
"""
LOCK_SESSION: Final = "SELECT pg_advisory_xact_lock(hashtextextended('voxgate:live_voice:' || $1, 0))"
#: Statements that run only after `LOCK_SESSION` of each of their sessions, in one transaction.
SESSION_LOCKED: Final = frozenset({INSERT_LIVE_VOICE})

INSERT_LIVE_TOKENS: Final = _insert("live_token_usage", LIVE_TOKEN_COLUMNS, "(session_id, kind, usage_id)")

INSERT_RATE_LIMIT: Final = """
INSERT INTO rate_limit_snapshots
    (session_id, tenant_id, observed_at, name, limit_value, remaining, reset_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Policy decisions (budget alerts and cuts, cap closes, re-clamps) for the audit trail.
INSERT_AUDIT_EVENT: Final = """
INSERT INTO audit_log (at, actor, tenant_id, action, detail)
VALUES ($1, 'voxgate', $2, $3, $4::jsonb)
"""

# The first end wins the time and reason; every end recomputes the totals from the ledger.
# A call can be ended twice from two replicas (a hangup here, its sideband monitor there),
# and the monitor may meter a last response after the first end: the second end counts it.
END_SESSION: Final = """
UPDATE realtime_sessions s
SET ended_at = COALESCE(s.ended_at, $2),
    end_reason = CASE WHEN s.ended_at IS NULL THEN $3 ELSE s.end_reason END,
    end_detail = CASE WHEN s.ended_at IS NULL THEN $4 ELSE s.end_detail END,
    responses = u.n, input_tokens = u.input_tokens, output_tokens = u.output_tokens,
    cost_micro_usd = u.cost + t.cost + d.cost + l.cost
FROM (SELECT count(*)::int AS n, COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
             COALESCE(sum(output_tokens), 0)::bigint AS output_tokens,
             COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM usage_ledger WHERE session_id = $1) u,
     (SELECT COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM transcription_usage WHERE session_id = $1) t,
     (SELECT COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM duration_usage WHERE session_id = $1) d,
     (SELECT COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM live_token_usage WHERE session_id = $1) l
WHERE s.id = $1
"""

# The order a batch's statements run in: a session's row first, what refers to it next, its
# end last (the end's totals count the batch's usage). Within a kind, submission order holds.
PHASE: Final = {
    INSERT_SESSION: 0,
    UPDATE_SESSION_INFO: 1,
    INSERT_USAGE: 2,
    INSERT_TRANSCRIPTION: 2,
    INSERT_DURATION: 2,
    INSERT_LIVE_VOICE: 2,
    INSERT_LIVE_TOKENS: 2,
    INSERT_RATE_LIMIT: 3,
    INSERT_AUDIT_EVENT: 3,
    END_SESSION: 4,
}

# UPDATEs that must find their session row (else the record waits: gateway.ledger.writer).
MUST_FIND_SESSION: Final = frozenset({END_SESSION, UPDATE_SESSION_INFO})


def timestamp(epoch: float) -> datetime:
    """Unix seconds as the aware UTC datetime a `timestamptz` parameter takes."""
    return datetime.fromtimestamp(epoch, UTC)


def _row(record: Any, columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(timestamp(getattr(record, c)) if c in _TIMES else getattr(record, c) for c in columns)


def usage_row(record: UsageRecord) -> tuple[Any, ...]:
    """The arguments of `INSERT_USAGE` for one record."""
    return _row(record, USAGE_COLUMNS)


def statements(record: LedgerRecord) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL (and arguments) that persists one record."""
    if isinstance(record, UsageRecord):
        return [(INSERT_USAGE, usage_row(record))]
    if isinstance(record, SessionStarted):
        s = record
        return [
            (
                INSERT_SESSION,
                (
                    s.session_id,
                    s.tenant_id,
                    s.api_key_id,
                    s.transport,
                    s.intent,
                    s.model,
                    s.end_user_hash,
                    s.gateway_instance,
                    timestamp(s.started_at),
                    orjson.dumps(dict(s.tags)).decode(),
                ),
            )
        ]
    if isinstance(record, SessionEnded):
        return [(END_SESSION, (record.session_id, timestamp(record.ended_at), record.end_reason, record.end_detail))]
    if isinstance(record, AuditEvent):
        detail = orjson.dumps({"session_id": record.session_id, **dict(record.detail)}, default=str).decode()
        return [(INSERT_AUDIT_EVENT, (timestamp(record.occurred_at), record.tenant_id, record.kind, detail))]
    if isinstance(record, SessionInfoRecord):
        return [(UPDATE_SESSION_INFO, (record.session_id, record.model, record.voice, record.upstream_session_id))]
    if isinstance(record, TranscriptionRecord):
        return [(INSERT_TRANSCRIPTION, _row(record, TRANSCRIPTION_COLUMNS))]
    if isinstance(record, DurationRecord):
        if record.cumulative_micro_usd is not None:
            row = _row(record, DURATION_COLUMNS)
            return [(INSERT_LIVE_VOICE, (*row[:9], row[10], record.cumulative_micro_usd))]
        return [(INSERT_DURATION, _row(record, DURATION_COLUMNS))]
    if isinstance(record, LiveTokenRecord):
        return [(INSERT_LIVE_TOKENS, _row(record, LIVE_TOKEN_COLUMNS))]
    return [
        (
            INSERT_RATE_LIMIT,
            (
                record.session_id,
                record.tenant_id,
                timestamp(record.observed_at),
                lim.name,
                lim.limit,
                lim.remaining,
                lim.reset_seconds,
            ),
        )
        for lim in record.limits
    ]


# --- reads: usage reports (gateway.ledger.reports) ------------------------------------------

# $2 is an optional lower bound: NULL means "since the beginning".
LEDGER_ROWS: Final = f"""
SELECT {", ".join(USAGE_REPORT_COLUMNS)}
FROM usage_ledger
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
ORDER BY occurred_at, response_id
"""

# sum(bigint) is numeric in Postgres; cast back so totals stay exact Python ints.
LEDGER_TOTALS: Final = """
SELECT count(*)::bigint AS responses,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM usage_ledger
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
"""

TRANSCRIPTION_TOTALS: Final = """
SELECT count(*)::bigint AS items,
       coalesce(sum(input_audio_tokens), 0)::bigint AS input_audio_tokens,
       coalesce(sum(input_text_tokens), 0)::bigint AS input_text_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(duration_ms), 0)::bigint AS duration_ms,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM transcription_usage
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
"""

# Half-open range [$2, $3) on (tenant_id, occurred_at): an index-only scan of
# usage_ledger_tenant_time, whose INCLUDE columns carry model and cost. Days are UTC.
DAILY_COSTS: Final = """
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       model,
       count(*)::bigint AS responses,
       sum(cost_micro_usd)::bigint AS cost_micro_usd
FROM usage_ledger
WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3
GROUP BY day, model
ORDER BY day, model
"""

# --- reads: budget rebuild (gateway.livestate.rebuild) --------------------------------------

#: Every table a cost is booked in, one per kind of usage: a tenant's spend is their sum.
COST_TABLES: Final = ("usage_ledger", "transcription_usage", "duration_usage", "live_token_usage")


def tenant_costs(since: str, until: str) -> str:
    """SQL rows (cost_micro_usd, occurred_at) of every cost table for tenant $1 with
    `since` <= occurred_at < `until` (both placeholders, e.g. "$2"): the FROM of a spend query."""
    return "\n    UNION ALL\n".join(
        f"    SELECT cost_micro_usd, occurred_at FROM {table}\n"
        f"    WHERE tenant_id = $1 AND occurred_at >= {since} AND occurred_at < {until}"
        for table in COST_TABLES
    )


# Spend of one tenant from every ledger: the month window and the day window, before a cutoff.
SPEND_BEFORE_CUTOFF: Final = f"""
SELECT coalesce(sum(cost_micro_usd) FILTER (WHERE occurred_at >= $3), 0)::bigint AS day,
       coalesce(sum(cost_micro_usd), 0)::bigint AS month
FROM (
{tenant_costs("$2", "$4")}
) AS spend
"""
