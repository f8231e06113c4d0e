"""The gateway-held sideband of a GPT-Live WebRTC session: meters and polices it through `/attach`.

A browser's media and data channel go straight to upstream, so the only place voxgate
sees a Live WebRTC session is a sideband it opens itself with its own key right after the
create (`wss://…/v1/live/sessions/{id}/attach`). The session is driven like any Live
session, by a `LiveCall` around the Live governor (gateway/session/live_call.py): the 15 s
initialisation charge is booked at once, each `session.usage.updated` books the time since
the last, `session.closed` the rest, terminal `response.event`s their backend tokens; the
budget is reserved a window ahead with a wall-clock backstop. The call's client side has
no socket: what the governor would tell the client is dropped (the browser hears it from
upstream), and closing the client hangs the session up. A sideband lost without
`session.closed` is booked from the last figure plus the wall-clock time since, estimated.

Which replica holds a session's sideband is a monitor claim in the live state (as for Realtime
calls, `gateway.livestate.monitors`), renewed while it runs. If that replica dies, the claim
lapses and another replica takes the session over (`gateway.webrtc.live_failover`): it attaches
a new sideband, resumed from what the ledger holds for the session (`Booked`), so the cumulative
usage that follows books only the rest. A drain hands the session over the same way, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.errors import GatewayError
from gateway.ledger.records import SessionStarted
from gateway.services import SHUTDOWN_WAIT_SECONDS
from gateway.session.live_call import LiveCall, LiveSides
from gateway.upstream import open_upstream
from gateway.webrtc.live_store import LiveRecord
from policies.actions import SettleBudget
from policies.live.governor import LiveGovernor
from policies.live.meter import LiveIdentity, VoiceTime
from policies.policy import TenantPolicy

if TYPE_CHECKING:
    import asyncpg

    from gateway.services import GatewayServices
    from gateway.webrtc.live_store import LiveStore
    from gateway.webrtc.upstream_http import UpstreamHttp

log = logging.getLogger("voxgate.live.sideband")

_USER_SPOKE = '"session.input_transcript.delta"'
DRAIN_CODE = 1001  # a gateway drain stops metering here; it never hangs up the customer's call


def live_path(live_session_id: str, action: str) -> str:
    return f"/live/sessions/{live_session_id}/{action}"


class SidebandClaims(Protocol):
    """Who holds each Live session's sideband (`gateway.webrtc.live_failover.LiveFailover`)."""

    takes_over: bool  # replicas take orphaned sessions over (else a drain ends them here)

    async def claim(self, live: LiveRecord) -> bool: ...

    async def release(self, live: LiveRecord) -> None: ...


BOOKED_VOICE = """
SELECT coalesce(max(active_ms), 0) AS active_ms, coalesce(max(standby_ms), 0) AS standby_ms,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost, extract(epoch FROM max(occurred_at))::float8 AS last_at
FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'
"""
BOOKED_TOKENS = "SELECT usage_id FROM live_token_usage WHERE session_id = $1"


@dataclass(frozen=True, slots=True)
class Booked:
    """What the ledger holds for a session whose sideband is taken over: its cumulative voice time and
    cost (the sum of its rows), when it was last booked, and the response and decision ids booked."""

    time: VoiceTime
    voice_micro_usd: int
    last_at: float | None
    usage_ids: frozenset[str]
    started_at: float | None = None  # the session's recorded start (its duration cap counts from it)

    @classmethod
    async def of(cls, pool: asyncpg.Pool, session_id: str) -> Booked:
        voice = await pool.fetchrow(BOOKED_VOICE, session_id)
        tokens = await pool.fetch(BOOKED_TOKENS, session_id)
        return cls(
            VoiceTime(int(voice["active_ms"]), int(voice["standby_ms"])),
            int(voice["cost"]),
            voice["last_at"],
            frozenset(r["usage_id"] for r in tokens),
        )


class LiveSideband:
    """One Live WebRTC session's metering sideband, from the create until `session.closed` or loss."""

    def __init__(
        self,
        services: GatewayServices,
        store: LiveStore,
        http: UpstreamHttp,
        live: LiveRecord,
        policy: TenantPolicy,
        leased: bool,
        claims: SidebandClaims | None = None,
        resumed: Booked | None = None,
    ) -> None:
        self.services, self.store, self.http, self.live = services, store, http, live
        self.claims, self.resumed = claims, resumed
        self.handing_over = False  # stop metering here, the session goes on (drain, claim lost)
        now = services.clock.time()
        # A resumed session keeps its recorded start: its duration cap is not restarted by a takeover.
        started_at = resumed.started_at if resumed is not None and resumed.started_at is not None else now
        started = SessionStarted(
            session_id=live.session_id,
            tenant_id=live.tenant_id,
            api_key_id=live.api_key_id,
            transport="webrtc",
            intent="live",
            model=live.model,
            end_user_hash=live.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=started_at,
        )
        # Its own ids: a takeover's governor must not repeat the reservation ids an earlier holder settled.
        identity = LiveIdentity(live.session_id, live.tenant_id, live.model, live.transport, secrets.token_hex(4))
        self.governor = LiveGovernor(identity, services.prices, policy, started_at)
        if resumed is not None:  # when the last holder last heard the user is not recorded: idle counts from now
            self.governor.note_client_activity(now)
        if resumed is not None and self.governor.meter is not None:
            self.governor.meter.resume(resumed.time, resumed.voice_micro_usd, resumed.last_at, resumed.usage_ids)
        sides = LiveSides(self._drop, self._send_upstream, self._hang_up, self._close_upstream)
        self.call = LiveCall(services, self.governor, started, policy, sides, leased=leased, clock=services.clock)
        self.upstream: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self._finishing = False  # in `_run`'s last part: handing over or ending, releasing its claim

    def start(self) -> None:
        self.call.start()
        self.services.live.add(self.call)
        self.task = asyncio.create_task(self._run(), name=f"voxgate-live-sideband-{self.live.live_session_id}")

    async def stop(self) -> None:
        """Gateway shutdown: stop metering here and hand the session over (another replica resumes it);
        with no takeover configured, end it here, booked so far as estimated."""
        task = self.task
        if task is None or task.done():
            return
        if not self._finishing:  # a sideband already finishing (ending or handing over) is not cut short
            self.handing_over = self._handed_over_at_drain()
            task.cancel()
        for _attempt in range(2):  # real time, as the drain's bound; a stuck finish is cancelled once
            done, _pending = await asyncio.wait([task], timeout=SHUTDOWN_WAIT_SECONDS)
            if done:
                return
            task.cancel()
        log.warning("live sideband for %s did not stop", self.live.live_session_id)

    def _handed_over_at_drain(self) -> bool:
        return self.claims is not None and self.claims.takes_over

    def hand_over(self) -> None:
        """Stop metering here without ending the session: its claim is released (or was lost), so
        another replica takes it over; its concurrency lease and ledger rows stay as they are."""
        self.handing_over = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self) -> None:
        call, live = self.call, self.live
        reason, detail = "sideband_lost", "the sideband closed without session.closed"
        ticks: asyncio.Task[None] | None = None
        try:
            if self.claims is not None and not await self.claims.claim(live):
                self.handing_over = True  # another live replica holds this session's sideband
                return
            self.upstream = await open_upstream(
                self.services.settings.upstream, {}, live.safety_id, path=live_path(live.live_session_id, "attach")
            )
            if call.closed.is_set():  # closed while connecting (a drain, say): nothing to close upstream then
                return
            # The governor runs once the sideband is open, so a close it decides reaches upstream.
            await call.act(self.governor.opening(self.services.clock.time()))
            if self.resumed is not None and self.governor.meter is not None:  # wall-clock counts from the last row
                self.governor.meter.reported_at = self.resumed.last_at or self.governor.meter.reported_at
            ticks = asyncio.create_task(call.run_ticks())
            async for data in self.upstream:
                if _USER_SPOKE in (data[:64] if isinstance(data, str) else data[:64].decode("latin-1")):
                    # The browser's events never pass here: its speech is its activity (idle timeout).
                    self.governor.note_client_activity(self.services.clock.time())
                await call.from_upstream(data)
                if self.governor.meter is not None and self.governor.meter.closed:
                    reason, detail = "call_ended", "session.closed"
        except GatewayError as exc:
            log.warning("live sideband for %s refused upstream: %s", live.live_session_id, exc.message)
            reason, detail = "sideband_refused", exc.message
            if self.resumed is not None and exc.status == 404:  # it ended upstream while nobody watched
                reason, detail = "call_ended", "the session was gone upstream when its sideband was taken over"
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            reason, detail = "gateway_shutdown", "the gateway stopped metering this session"
        finally:
            self._finishing = True
            if ticks is not None:
                ticks.cancel()
            await self._close_upstream(1000, "")
            drained = call.close_code == DRAIN_CODE and call.end_reason == "gateway_shutdown"
            if self.handing_over or (drained and self._handed_over_at_drain()):
                await self._hand_over()
            else:
                if call.end_reason is None and reason in ("sideband_lost", "sideband_refused"):
                    # The browser's media goes straight to OpenAI: a call voxgate can neither meter nor
                    # police any more is hung up, not left running unbilled (as in live_calls._record).
                    log.warning("hanging up live session %s: %s", live.live_session_id, detail)
                    await self._hang_up(1000, "")
                await self._end(call.end_reason or reason, detail)
            try:
                if self.claims is not None:
                    await self.claims.release(live)
            finally:
                # Only now: a drain waits for its sessions to leave the registry, so a stopping replica
                # gives its claims back before its stores close (the next holder need not wait a TTL).
                self.services.live.discard(self.call)

    async def _hand_over(self) -> None:
        """Stop here, leaving the session to the next holder: budget windows reserved ahead are given
        back (the next holder reserves its own), the lease is kept (its heartbeat moves with it)."""
        call = self.call
        try:
            released = [a for a in self.governor.on_end(self.services.clock.time()) if isinstance(a, SettleBudget)]
            await call.act(released)
            call.leased = False
            self.services.enforcement.forget(self.live.tenant_id, self.live.session_id)
            await call.aclose()
            log.info("handed live session %s over to another replica", self.live.live_session_id)
        except Exception:
            log.exception("handing live session %s over", self.live.live_session_id)

    async def _end(self, reason: str, detail: str | None) -> None:
        try:
            self.call.end(reason, detail)
            self.services.metrics.sessions_ended.labels(reason).inc()
            await self.call.aclose()
            await self.store.end(self.live.live_session_id, self.services.clock.time())
        except Exception:
            log.exception("ending live session %s", self.live.live_session_id)

    # -- the call's sides -------------------------------------------------------------------------

    async def _drop(self, text: str) -> None:
        """The browser hears upstream directly; nothing voxgate says can reach its data channel."""

    async def _send_upstream(self, text: str) -> None:
        if self.upstream is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.upstream.send(text)

    async def _hang_up(self, code: int, reason: str) -> None:
        if code == DRAIN_CODE:
            return
        live = self.live
        try:
            await self.http.send("POST", live_path(live.live_session_id, "hangup"), live.safety_id, accept="*/*")
        except GatewayError as exc:
            if exc.status != 404:  # already gone is what a hangup wants
                log.warning("hanging up live session %s failed: %s", live.live_session_id, exc.message)

    async def _close_upstream(self, code: int, reason: str) -> None:
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                await self.upstream.close()
