"""What the ledger stores: the record types the sessions submit, and their one-line JSON form.

Usage, transcription, rate-limit, session-info and audit records are decided by the pure core
(`policies.actions`); the session's start and end are the shell's (it knows the transport and
the instance). The JSON form is what the spool journal and the dead-letter file hold, so it is
derived from the dataclasses and never listed by hand.
"""

from __future__ import annotations

import dataclasses
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
    )
}


def encode_record(record: LedgerRecord) -> bytes:
    """One JSON object (no newline): `{"kind": <class name>, "data": <fields>}`."""
    return orjson.dumps({"kind": type(record).__name__, "data": dataclasses.asdict(record)})


def decode_record(line: bytes) -> LedgerRecord:
    """The record `encode_record` wrote."""
    raw = orjson.loads(line)
    cls = _KINDS[raw["kind"]]
    data = raw["data"]
    if cls is RateLimitsRecord:
        data["limits"] = tuple(RateLimit(**lim) for lim in data["limits"])
    record: LedgerRecord = cls(**data)
    return record
