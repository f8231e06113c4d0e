"""What the ledger stores: the record types the sessions submit, and their one-line JSON form.

Usage, transcription, rate-limit, session-info and audit records are decided by the pure core
(`policies.actions`); the session's start and end are the shell's (it knows the transport and
the instance). The JSON form is what the spool journal and the dead-letter file hold, so it is
derived from the dataclasses and never listed by hand.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import orjson

from policies.actions import (
    AuditEvent,
    RateLimit,
    RateLimitsRecord,
    SessionInfoRecord,
    TranscriptionRecord,
    UsageRecord,
)


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session_id: str
    tenant_id: str
    api_key_id: str | None
    transport: str
    intent: str
    model: str | None
    end_user_hash: str | None
    gateway_instance: str
    started_at: float
    # The client's `X-Voxgate-Tags` (policies.tags), sorted by key: what finance groups costs by.
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DurationRecord:
    """Time-billed usage: a GPT-Live session's voice seconds or a translation's appended audio.

    One row per (`session_id`, `kind`, `usage_id`); `estimated` marks time bounded by the
    wall clock because upstream never reported a final figure.
    """

    session_id: str
    kind: str
    usage_id: str
    tenant_id: str
    model: str
    occurred_at: float
    active_ms: int
    standby_ms: int
    estimated: bool
    cost_micro_usd: int
    price_version: str
    # A GPT-Live voice row: the session's cumulative voice cost; the row is booked as its excess over
    # what the session's rows hold (gateway.ledger.sql.INSERT_LIVE_VOICE). Not a column.
    cumulative_micro_usd: int | None = None


@dataclass(frozen=True, slots=True)
class LiveTokenRecord:
    """A GPT-Live session's delegated Responses response or Decisions decision, priced by its
    own model and service tier: one `live_token_usage` row per (`session_id`, `kind`, `usage_id`)."""

    session_id: str
    kind: str
    usage_id: str
    tenant_id: str
    model: str
    service_tier: str | None
    status: str
    occurred_at: float
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    price_version: str


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session_id: str
    ended_at: float
    end_reason: str
    end_detail: str | None


LedgerRecord = (
    SessionStarted
    | SessionEnded
    | UsageRecord
    | TranscriptionRecord
    | RateLimitsRecord
    | SessionInfoRecord
    | AuditEvent
    | DurationRecord
    | LiveTokenRecord
)

_KINDS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        SessionStarted,
        SessionEnded,
        UsageRecord,
        TranscriptionRecord,
        RateLimitsRecord,
        SessionInfoRecord,
        AuditEvent,
        DurationRecord,
        LiveTokenRecord,
    )
}


def encode_record(record: LedgerRecord) -> bytes:
    """One JSON object (no newline): `{"kind": <class name>, "data": <fields>}`."""
    document = {"kind": type(record).__name__, "data": dataclasses.asdict(record)}
    try:
        return orjson.dumps(document)
    except TypeError:  # an integer past 64 bits (a record Postgres will refuse): kept, for the dead letters
        return json.dumps(document, separators=(",", ":"), default=str).encode()


def decode_record(line: bytes) -> LedgerRecord:
    """The record `encode_record` wrote."""
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:  # what `encode_record` wrote with the standard library
        raw = json.loads(line)
    cls = _KINDS[raw["kind"]]
    data = raw["data"]
    if cls is RateLimitsRecord:
        data["limits"] = tuple(RateLimit(**lim) for lim in data["limits"])
    if cls is SessionStarted:
        data["tags"] = tuple((key, value) for key, value in data.get("tags", ()))
    record: LedgerRecord = cls(**data)
    return record
