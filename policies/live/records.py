"""What a Live session books: one ledger row per stretch of session time, delegated response
or decision, idempotent per (session, kind, usage id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

LiveUsageKind = Literal["live_voice", "response", "decision"]
VOICE: Final = "live_voice"
RESPONSE: Final = "response"
DECISION: Final = "decision"


@dataclass(frozen=True, slots=True)
class LiveUsageRecord:
    """One priced piece of a Live session's usage: becomes exactly one `live_usage` row.

    Voice rows book the difference between the cost of the session's cumulative time and what
    was booked before, so their sum is the cumulative cost rounded once; their `usage_id` is
    the cumulative `active_ms:standby_ms` they book up to (a replay books nothing twice).
    Response rows use the response id, decision rows the event id. `estimated` marks time
    booked from wall-clock because no `session.closed` arrived.
    """

    session_id: str
    kind: str
    usage_id: str
    tenant_id: str
    model: str
    occurred_at: float
    active_ms: int
    standby_ms: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    service_tier: str | None
    status: str
    cost_micro_usd: int
    price_version: str
    estimated: bool = False
    # Voice rows: the cost of the session's whole cumulative time (`cost_micro_usd` is the part of it
    # this meter had not booked). The ledger books greatest(0, this - what the session's rows hold),
    # so whichever meter (or journal replay) writes it, the session's time is booked once.
    cumulative_micro_usd: int | None = None


@dataclass(frozen=True, slots=True)
class BookLiveUsage:
    """Write `record` to the ledger durably and add its cost to the tenant's spend."""

    record: LiveUsageRecord
