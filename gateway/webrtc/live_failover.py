"""Live WebRTC sidebands survive the replica holding them: claimed, renewed, taken over.

Each Live WebRTC session's gateway-held sideband (`gateway.webrtc.live_sideband`) is claimed in
the live state (`<prefix>{<tenant>}:monitor:<live session id>`, the claims Realtime calls use).
`LiveFailover`, one per process, renews the claims of the sidebands held here a few times per
claim life; a sideband whose claim another replica now holds is handed over. Every
`VOXGATE_CALLS_SCAN_SECONDS` it looks for Live WebRTC sessions still active in Postgres that no
live replica holds (the holder died, or handed them over at its drain), claims each, and resumes
its sideband from what the ledger booked for it (`Booked`): the next cumulative usage books only
the rest, never the whole again.

A claim lives half a concurrency-lease TTL (T/2); the holder's heartbeat renews the session's
lease every T/3, so a holder that dies just after renewing its claim leaves the lease as little as
T - T/3 - T/2 = T/6 past the claim's lapse. `serve` therefore requires a scan shorter than T/6, and
the takeover renews the lease (`LeaseKeeper.take_over`) before resuming, so the session is never
reaped while the new holder's heartbeat (up to T/3 away) has yet to renew it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError

from gateway.background import stop_tasks
from gateway.webrtc.live_sideband import Booked, LiveSideband
from gateway.webrtc.live_sip_recovery import recover_stuck_accepts
from gateway.webrtc.live_store import LiveRecord, LiveStore

if TYPE_CHECKING:
    from litestar import Litestar

    from gateway.services import GatewayServices
    from gateway.webrtc.upstream_http import UpstreamHttp

log = logging.getLogger("voxgate.live.failover")

# Live WebRTC sessions still running, whose sideband voxgate holds (the WebSocket forks recorded in
# `live_sessions` ride their client's socket: they end with it and are never taken over).
ORPHAN_CANDIDATES: Final = """
SELECT l.live_session_id, l.tenant_id, l.session_id, l.api_key_id, l.model, l.end_user_hash, l.forked_from,
       l.transport, extract(epoch FROM coalesce(s.started_at, l.created_at))::float8 AS started_at
FROM live_sessions l JOIN realtime_sessions s ON s.id = l.session_id
WHERE l.state = 'active' AND s.transport = 'webrtc' AND s.ended_at IS NULL
"""


class LiveFailover:
    """This replica's claims on Live sidebands: taken, renewed, released, and orphans resumed."""

    def __init__(
        self,
        services: GatewayServices,
        store: LiveStore,
        held: Mapping[str, LiveSideband],
        hold: Callable[[LiveSideband], None],
    ) -> None:
        self.services = services
        self.store = store
        self._held = held  # live session id -> the sideband held here
        self._hold = hold
        enforcement = services.settings.enforcement
        self.ttl_s = enforcement.lease_ttl_seconds / 2
        self.renew_every_s = self.ttl_s / 3
        self.scan_every_s = enforcement.calls_scan_seconds
        self.takes_over = self.scan_every_s > 0  # a drain hands its sessions over only if someone scans
        self.http: UpstreamHttp | None = None
        self._renewed: dict[str, float] = {}  # live session id -> when (monotonic) its claim was last renewed
        self._task: asyncio.Task[None] | None = None

    # -- SidebandClaims ----------------------------------------------------------------------

    async def claim(self, live: LiveRecord) -> bool:
        """Take (or renew) the session's claim unless another live replica holds it; False when the
        live state does not answer (the session may be metered elsewhere)."""
        asked = self.services.clock.monotonic()
        try:
            held = await self.services.enforcement.state.claim_monitor(
                live.tenant_id, live.live_session_id, self.ttl_s, self.services.clock.time()
            )
            if held:
                self._renewed[live.live_session_id] = asked
            return held
        except RedisError as exc:
            log.warning("could not claim the sideband of live session %s: %s", live.live_session_id, exc)
            # Unknown who holds it: never meter a session twice (a scan resumes it once Redis answers);
            # with no takeover configured, no other replica ever meters it.
            return not self.takes_over

    async def release(self, live: LiveRecord) -> None:
        try:
            await self.services.enforcement.state.release_monitor(live.tenant_id, live.live_session_id)
        except RedisError as exc:  # it lapses on its own
            log.warning("could not release the sideband claim of %s (%s); it lapses", live.live_session_id, exc)

    # -- the background loop -------------------------------------------------------------------

    def start(self, http: UpstreamHttp) -> None:
        self.http = http
        if self._task is None:
            self._task = asyncio.create_task(self._maintain(), name="voxgate-live-failover")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def _maintain(self) -> None:
        clock = self.services.clock
        waits = [self.renew_every_s] + ([self.scan_every_s] if self.scan_every_s > 0 else [])
        next_scan = 0.0
        while not self.services.live.draining:
            await clock.sleep(min(waits))
            await self.renew()
            if self.scan_every_s > 0 and clock.monotonic() >= next_scan and not self.services.live.draining:
                next_scan = clock.monotonic() + self.scan_every_s
                try:
                    await self.take_over_orphans()
                    await self._recover_sip_accepts()
                except Exception:
                    log.exception("scanning for live sessions nobody holds failed")

    async def _recover_sip_accepts(self) -> None:
        """Inbound SIP sessions a replica left mid-accept (gateway/webrtc/live_sip_recovery.py)."""
        if self.http is not None:
            await recover_stuck_accepts(self.services, self.http)

    async def renew(self) -> None:
        """Renew the claims held here; a sideband another replica took is handed over."""
        for live_id, sideband in list(self._held.items()):
            if sideband.handing_over or sideband.task is None or sideband.task.done():
                continue
            asked = self.services.clock.monotonic()
            try:
                held = await self.services.enforcement.state.claim_monitor(
                    sideband.live.tenant_id, live_id, self.ttl_s, self.services.clock.time()
                )
            except RedisError as exc:  # retried on the next pass, while the claim may still be ours
                held = None
                log.warning("could not renew the sideband claim of %s: %s", live_id, exc)
            if held:
                self._renewed[live_id] = asked
            elif held is False:
                log.warning("another replica holds live session %s now; handing it over", live_id)
                sideband.hand_over()
            elif self.claim_lapsed(live_id):
                # The claim may have lapsed and another replica taken the session: stop metering it here.
                log.warning("the sideband claim of live session %s went unrenewed; handing it over", live_id)
                sideband.hand_over()
        for live_id in set(self._renewed) - set(self._held):
            del self._renewed[live_id]

    def claim_lapsed(self, live_id: str) -> bool:
        """The claim lapses before the next renewal pass could renew it (it was last renewed, or taken,
        two thirds of a claim life ago or more): it may be another replica's by then."""
        renewed = self._renewed.get(live_id)
        return renewed is None or self.services.clock.monotonic() - renewed >= self.ttl_s - self.renew_every_s

    async def take_over_orphans(self) -> list[str]:
        """Resume the sidebands of active Live WebRTC sessions no live replica holds; their ids."""
        rows = await self.services.background.pool.fetch(ORPHAN_CANDIDATES)  # a background scan
        taken: list[str] = []
        for row in rows:
            live = _record(row)
            if live.live_session_id in self._held or self.services.live.draining:
                continue
            if not await self._claim_orphan(live):
                continue
            try:
                await self._resume(live, row["started_at"])
            except Exception:
                log.exception("resuming the sideband of live session %s failed", live.live_session_id)
                await self.release(live)
                continue
            taken.append(live.live_session_id)
        return taken

    async def _claim_orphan(self, live: LiveRecord) -> bool:
        return await self.claim(live)

    async def _resume(self, live: LiveRecord, started_at: float | None) -> None:
        assert self.http is not None, "LiveFailover.start sets the upstream client"
        services = self.services
        # First renew the session's concurrency lease: its dead holder's last heartbeat may leave it
        # only T/6 past the claim's lapse, and this replica's heartbeat may come a third of a TTL late.
        await services.enforcement.take_over(live.tenant_id, live.session_id, live.model, services.clock.time())
        policy, _ = await services.enforcement.policy_for(live.tenant_id)
        # Its duration cap counts from its recorded start, not from this takeover.
        booked = replace(await Booked.of(services.pool, live.session_id), started_at=started_at)
        log.warning("taking over the sideband of live session %s (its holder stopped)", live.live_session_id)
        self._hold(LiveSideband(services, self.store, self.http, live, policy, True, claims=self, resumed=booked))


def _record(row: Mapping[str, Any]) -> LiveRecord:
    return LiveRecord(
        live_session_id=row["live_session_id"],
        tenant_id=row["tenant_id"],
        session_id=row["session_id"],
        model=row["model"],
        api_key_id=row["api_key_id"],
        safety_id=row["end_user_hash"] or "",
        forked_from=row["forked_from"],
        transport=row["transport"],
    )


async def start_live_failover(app: Litestar) -> None:
    """At start: every replica renews its Live sideband claims and takes over orphaned ones."""
    from gateway.webrtc.context import context_of
    from gateway.webrtc.live_calls import live_context_of

    context = context_of(app)
    live_context_of(context).failover.start(context.upstream)
