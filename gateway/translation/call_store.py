"""The durable record of the translation calls voxgate brokered (`translation_calls`, migration 0016).

A translation call's media never passes through voxgate and upstream reports no usage, so
the row is the call's meter: written with its `realtime_sessions` row in one transaction
before the SDP answer goes back, and ended with its `duration_usage` row and the session's
end in another. A replica ending a call (a hangup, or a sweep at the cap) first claims it for
`CLAIM_S`; a claim left by a replica that died expires, and the sweep of any replica takes the
call over at its cap (docs/translation.md#webrtc-calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg

from gateway.ledger.records import DurationRecord, SessionEnded, SessionStarted
from gateway.ledger.sql import statements, timestamp

CLAIM_S: Final = 30.0  # how long a replica holds a call it is ending before another may take it

_INSERT: Final = """
INSERT INTO translation_calls
    (call_id, tenant_id, session_id, api_key_id, end_user_hash, model, reservation_id,
     reserved_micro_usd, offered_at, cap_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (call_id) DO NOTHING
"""

_COLUMNS: Final = """call_id, tenant_id, session_id, api_key_id, end_user_hash, model, reservation_id,
    reserved_micro_usd, extract(epoch FROM offered_at)::float8 AS offered_at,
    extract(epoch FROM cap_at)::float8 AS cap_at, state, end_reason,
    extract(epoch FROM ended_at)::float8 AS ended_at, cost_micro_usd, upstream_hung_up, settle_pending"""

_GET: Final = f"SELECT {_COLUMNS} FROM translation_calls WHERE call_id = $1"

# One call, if it is active and nobody else is ending it. The claim is kept until the call is
# booked, settled and hung up upstream (`_SETTLED`, `_HUNG_UP`).
_CLAIM: Final = f"""
UPDATE translation_calls SET claimed_until = $2::timestamptz + make_interval(secs => $3)
WHERE call_id = $1 AND state = 'active' AND (claimed_until IS NULL OR claimed_until < $2)
RETURNING {_COLUMNS}
"""

_UNCLAIM: Final = "UPDATE translation_calls SET claimed_until = NULL WHERE call_id = $1 AND state = 'active'"

# Calls nobody is ending (a claim of a dead replica has expired): active ones past their cap,
# capped ones whose upstream hangup has not succeeded yet, and booked ones not settled yet.
_CLAIM_DUE: Final = f"""
UPDATE translation_calls SET claimed_until = $1::timestamptz + make_interval(secs => $2)
WHERE call_id IN (
    SELECT call_id FROM translation_calls
    WHERE ((state = 'active' OR NOT upstream_hung_up) AND cap_at <= $1 OR settle_pending)
      AND (claimed_until IS NULL OR claimed_until < $1)
    ORDER BY cap_at LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING {_COLUMNS}
"""

_END: Final = """
UPDATE translation_calls
SET state = 'ended', end_reason = $2, ended_at = $3, cost_micro_usd = $4, upstream_hung_up = $5,
    settle_pending = true
WHERE call_id = $1 AND state = 'active'
"""

# The booking's reservation is settled (migration 0020): nothing is left to do unless upstream's
# hangup is (then the claim runs out and a sweep hangs up again).
_SETTLED: Final = """
UPDATE translation_calls
SET settle_pending = false, claimed_until = CASE WHEN upstream_hung_up THEN NULL ELSE claimed_until END
WHERE call_id = $1
"""

# The leases active calls hold (`call_leases`); the partial index `translation_calls_due` covers it.
_ACTIVE_LEASES: Final = "SELECT tenant_id, session_id, model FROM translation_calls WHERE state = 'active'"

_HUNG_UP: Final = """
UPDATE translation_calls
SET upstream_hung_up = true, claimed_until = CASE WHEN settle_pending THEN claimed_until ELSE NULL END
WHERE call_id = $1
"""


@dataclass(frozen=True, slots=True)
class TranslationCall:
    """One `translation_calls` row; times are Unix seconds."""

    call_id: str
    tenant_id: str
    session_id: str
    api_key_id: str | None
    end_user_hash: str | None
    model: str
    reservation_id: str
    reserved_micro_usd: int
    offered_at: float
    cap_at: float
    state: str = "active"
    end_reason: str | None = None
    ended_at: float | None = None
    cost_micro_usd: int | None = None
    upstream_hung_up: bool = False
    settle_pending: bool = False  # booked, and its reservation not settled yet (migration 0020)

    @classmethod
    def of(cls, row: asyncpg.Record) -> TranslationCall:
        return cls(**dict(row))


class TranslationCallStore:
    """`translation_calls` over the gateway's Postgres pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def record(self, call: TranslationCall, started: SessionStarted) -> bool:
        """The session's row and the call's, together; False if upstream reused a call id."""
        async with self.pool.acquire() as conn, conn.transaction():
            for sql, args in statements(started):
                await conn.execute(sql, *args)
            status = await conn.execute(
                _INSERT,
                call.call_id,
                call.tenant_id,
                call.session_id,
                call.api_key_id,
                call.end_user_hash,
                call.model,
                call.reservation_id,
                call.reserved_micro_usd,
                timestamp(call.offered_at),
                timestamp(call.cap_at),
            )
        return bool(status.endswith(" 1"))

    async def book_unconfirmed(self, started: SessionStarted, record: DurationRecord, ended: SessionEnded) -> None:
        """An offer whose answer was lost (`unconfirmed`): its session started, booked and ended in
        one transaction, with no `translation_calls` row (there is no call id to end it by)."""
        async with self.pool.acquire() as conn, conn.transaction():
            for sql, args in [*statements(started), *statements(record), *statements(ended)]:
                await conn.execute(sql, *args)

    async def get(self, call_id: str) -> TranslationCall | None:
        row = await self.pool.fetchrow(_GET, call_id)
        return TranslationCall.of(row) if row is not None else None

    async def claim(self, call_id: str, now: float) -> TranslationCall | None:
        row = await self.pool.fetchrow(_CLAIM, call_id, timestamp(now), CLAIM_S)
        return TranslationCall.of(row) if row is not None else None

    async def unclaim(self, call_id: str) -> None:
        await self.pool.execute(_UNCLAIM, call_id)

    async def claim_due(self, now: float, limit: int) -> list[TranslationCall]:
        rows = await self.pool.fetch(_CLAIM_DUE, timestamp(now), CLAIM_S, limit)
        return [TranslationCall.of(row) for row in rows]

    async def end(
        self, call: TranslationCall, reason: str, record: DurationRecord, ended: SessionEnded, hung_up: bool
    ) -> bool:
        """Book the call: its `duration_usage` row, the session's end and the call's, in one transaction.

        `hung_up`: upstream already confirmed the call gone (else a sweep keeps hanging it up).
        The booking waits for its settle (`settled`) under the caller's claim.
        False (nothing written) if the call was already ended."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                _END, call.call_id, reason, timestamp(record.occurred_at), record.cost_micro_usd, hung_up
            )
            if not status.endswith(" 1"):
                return False
            for sql, args in [*statements(record), *statements(ended)]:
                await conn.execute(sql, *args)
        return True

    async def settled(self, call_id: str) -> None:
        """The booking's reservation is settled to its cost: no sweep needs to settle it again."""
        await self.pool.execute(_SETTLED, call_id)

    async def active_leases(self) -> list[tuple[str, str, str]]:
        """(tenant, session, model) of every active call: the leases the sweep renews."""
        rows = await self.pool.fetch(_ACTIVE_LEASES)
        return [(row["tenant_id"], row["session_id"], row["model"]) for row in rows]

    async def hung_up(self, call_id: str) -> None:
        """Upstream confirmed a booked call gone: no sweep needs to hang it up again."""
        await self.pool.execute(_HUNG_UP, call_id)
