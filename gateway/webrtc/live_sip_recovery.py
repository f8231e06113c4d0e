"""Inbound SIP sessions a replica left in `accepting` (it died mid-accept, or Postgres refused the
final state write): found by the Live failover scan and settled.

An accept writes the `live_sessions` owner row and `accepting` before it asks upstream, so a row
still `accepting` after `ACCEPTING_STALE_S` (far longer than any accept request may take) is one
of two things. Its sideband started (the session's start is booked in `realtime_sessions`): the
call is live and metered, it is marked `accepted` and the failover scan keeps its sideband held.
Otherwise nothing meters it: it is hung up upstream (a 404 is what a hangup wants), its owner row
ended, its concurrency lease released and its state `ended`. A SIP session has no prepaid charge,
so nothing is booked for it (docs/live.md#sip).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from gateway.errors import GatewayError
from gateway.webrtc.live_sideband import live_path
from gateway.webrtc.live_store import LiveStore

if TYPE_CHECKING:
    from gateway.services import GatewayServices
    from gateway.webrtc.upstream_http import UpstreamHttp

log = logging.getLogger("voxgate.sip")

ACCEPTING_STALE_S: Final = 120.0

STUCK_ACCEPTS: Final = """
SELECT c.live_session_id, c.tenant_id, c.session_id, (s.id IS NOT NULL) AS started
FROM live_sip_calls c LEFT JOIN realtime_sessions s ON s.id = c.session_id
WHERE c.state = 'accepting' AND c.state_changed_at < now() - make_interval(secs => $1)
"""
SETTLE: Final = """
UPDATE live_sip_calls SET state = $2, state_changed_at = now()
WHERE live_session_id = $1 AND state = 'accepting' RETURNING state
"""


async def recover_stuck_accepts(
    services: GatewayServices, http: UpstreamHttp, stale_s: float = ACCEPTING_STALE_S
) -> list[str]:
    """Settle the sessions stuck in `accepting`; the ids of those hung up."""
    hung_up: list[str] = []
    store = LiveStore(services.pool)
    for row in await services.pool.fetch(STUCK_ACCEPTS, stale_s):
        live_id = str(row["live_session_id"])
        if row["started"]:  # metered: the failover scan holds its sideband
            await services.pool.fetchval(SETTLE, live_id, "accepted")
            continue
        if await services.pool.fetchval(SETTLE, live_id, "ended") is None:  # another replica settled it
            continue
        log.warning("SIP session %s was left mid-accept with nothing metering it; hanging it up", live_id)
        try:
            await http.send("POST", live_path(live_id, "hangup"), "", accept="*/*")
        except GatewayError as exc:
            if exc.status != 404:
                log.error("hanging up SIP session %s failed: %s", live_id, exc.message)
        await store.end(live_id, services.clock.time())
        if row["session_id"]:
            await services.enforcement.release(str(row["tenant_id"]), str(row["session_id"]))
        hung_up.append(live_id)
    return hung_up
