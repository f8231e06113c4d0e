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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.errors import GatewayError
from gateway.ledger.records import SessionStarted
from gateway.session.live_call import LiveCall, LiveSides
from gateway.upstream import open_upstream
from gateway.webrtc.live_store import LiveRecord
from policies.live.governor import LiveGovernor
from policies.live.meter import LiveIdentity
from policies.policy import TenantPolicy

if TYPE_CHECKING:
    from gateway.services import GatewayServices
    from gateway.webrtc.live_store import LiveStore
    from gateway.webrtc.upstream_http import UpstreamHttp

log = logging.getLogger("voxgate.live.sideband")

_USER_SPOKE = '"session.input_transcript.delta"'
DRAIN_CODE = 1001  # a gateway drain stops metering here; it never hangs up the customer's call


def live_path(live_session_id: str, action: str) -> str:
    return f"/live/sessions/{live_session_id}/{action}"


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
    ) -> None:
        self.services, self.store, self.http, self.live = services, store, http, live
        now = services.clock.time()
        started = SessionStarted(
            session_id=live.session_id,
            tenant_id=live.tenant_id,
            api_key_id=live.api_key_id,
            transport="webrtc",
            intent="live",
            model=live.model,
            end_user_hash=live.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
        )
        identity = LiveIdentity(live.session_id, live.tenant_id, live.model, "webrtc")
        self.governor = LiveGovernor(identity, services.prices, policy, now)
        sides = LiveSides(self._drop, self._send_upstream, self._hang_up, self._close_upstream)
        self.call = LiveCall(services, self.governor, started, policy, sides, leased=leased, clock=services.clock)
        self.upstream: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
        self.call.start()
        self.services.live.add(self.call)
        self.task = asyncio.create_task(self._run(), name=f"voxgate-live-sideband-{self.live.live_session_id}")

    async def stop(self) -> None:
        """Gateway shutdown: stop metering here; the call goes on, booked so far as estimated."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await self.closed.wait()

    async def _run(self) -> None:
        call, live = self.call, self.live
        reason, detail = "sideband_lost", "the sideband closed without session.closed"
        ticks: asyncio.Task[None] | None = None
        try:
            self.upstream = await open_upstream(
                self.services.settings.upstream, {}, live.safety_id, path=live_path(live.live_session_id, "attach")
            )
            # The governor runs once the sideband is open, so a close it decides reaches upstream.
            await call.act(self.governor.opening(self.services.clock.time()))
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
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            reason, detail = "gateway_shutdown", "the gateway stopped metering this session"
        finally:
            if ticks is not None:
                ticks.cancel()
            await self._close_upstream(1000, "")
            if call.end_reason is None and reason in ("sideband_lost", "sideband_refused"):
                # The browser's media goes straight to OpenAI: a call voxgate can neither meter nor
                # police any more is hung up, not left running unbilled (as in live_calls._record).
                await self._hang_up(1000, "")
            await self._end(call.end_reason or reason, detail)

    async def _end(self, reason: str, detail: str | None) -> None:
        try:
            self.call.end(reason, detail)
            self.services.metrics.sessions_ended.labels(reason).inc()
            await self.call.aclose()
            await self.store.end(self.live.live_session_id, self.services.clock.time())
        except Exception:
            log.exception("ending live session %s", self.live.live_session_id)
        finally:
            self.services.live.discard(self.call)
            self.closed.set()

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
