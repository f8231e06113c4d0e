"""Which tenant owns each GPT-Live session voxgate created or forked (`live_sessions`, migration 0013).

Upstream, one project key reaches every session of the project, so `/attach`, `/fork`,
`/hangup`, `/content` and the SIP controls are proxied only for a session id recorded here
for the calling tenant (an inbound SIP session is recorded when the tenant accepts it; while it
rings it is owned through `live_sip_calls`, gateway/webrtc/live_sip.py); anything else is the
404 an unknown id gets, answered before any upstream connection (docs/webrtc.md#gpt-live-over-webrtc).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg

from gateway.ledger.sql import timestamp

INSERT_LIVE: Final = """
INSERT INTO live_sessions (live_session_id, tenant_id, session_id, api_key_id, model, end_user_hash, forked_from,
                           created_at, transport)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (live_session_id) DO NOTHING
RETURNING live_session_id
"""

GET_LIVE: Final = """
SELECT live_session_id, tenant_id, session_id, api_key_id, model, end_user_hash, forked_from, state, transport
FROM live_sessions WHERE live_session_id = $1
"""

END_LIVE: Final = """
UPDATE live_sessions SET state = 'ended', ended_at = $2
WHERE live_session_id = $1 AND state = 'active'
"""


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """A GPT-Live session as voxgate recorded it: its upstream id and voxgate's session id."""

    live_session_id: str
    tenant_id: str
    session_id: str
    model: str
    api_key_id: str | None = None
    safety_id: str = ""
    forked_from: str | None = None
    state: str = "active"
    transport: str = "webrtc"  # or "sip" (inbound or outbound, migration 0019): no prepaid time


class LiveStore:
    """The `live_sessions` table: record, look up and end GPT-Live sessions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, live: LiveRecord, now: float) -> bool:
        """Record a new session; False if upstream reused an id already recorded."""
        inserted = await self._pool.fetchval(
            INSERT_LIVE,
            live.live_session_id,
            live.tenant_id,
            live.session_id,
            live.api_key_id,
            live.model,
            live.safety_id or None,
            live.forked_from,
            timestamp(now),
            live.transport,
        )
        return inserted is not None

    async def get(self, live_session_id: str) -> LiveRecord | None:
        row = await self._pool.fetchrow(GET_LIVE, live_session_id)
        if row is None:
            return None
        return LiveRecord(
            live_session_id=row["live_session_id"],
            tenant_id=row["tenant_id"],
            session_id=row["session_id"],
            model=row["model"],
            api_key_id=row["api_key_id"],
            safety_id=row["end_user_hash"] or "",
            forked_from=row["forked_from"],
            state=row["state"],
            transport=row["transport"],
        )

    async def end(self, live_session_id: str, now: float) -> None:
        await self._pool.execute(END_LIVE, live_session_id, timestamp(now))
