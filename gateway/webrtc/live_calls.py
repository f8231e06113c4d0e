"""GPT-Live over WebRTC: create and fork sessions server-side under the tenant's policy.

`POST /v1/live/sessions` (and `POST …/{id}/fork`) carry `{"session", "transport":
{"type": "webrtc", "sdp"}}`. voxgate polices the session (`live_config`: allowlists, the
delegated backend's output ceiling, the browser's `allowed_client_events`), admits it on
the Live model's per-minute price, forwards it with its own key, records which tenant owns
the returned `live_…` id (`live_store`) and holds the session's sideband itself
(`live_sideband`) to meter it. A fork is a new session: admitted, recorded and billed on
its own, under the same policy (docs/webrtc.md#gpt-live-over-webrtc).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final

import orjson

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.services import GatewayServices
from gateway.session.admission import draining_error
from gateway.webrtc.access import Caller
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.live_config import police_webrtc_session
from gateway.webrtc.live_sideband import LiveSideband
from gateway.webrtc.live_store import LiveRecord, LiveStore
from gateway.webrtc.sdp import validate_sdp
from gateway.webrtc.sessions import tenant_policy

log = logging.getLogger("voxgate.live")

LIVE_SESSIONS: Final = "/live/sessions"


class LiveContext:
    """One process's Live session records and the sidebands it holds."""

    def __init__(self, services: GatewayServices) -> None:
        self.services = services
        self.store = LiveStore(services.pool)
        self.sidebands: dict[str, LiveSideband] = {}

    def hold(self, sideband: LiveSideband) -> None:
        live_id = sideband.live.live_session_id
        self.sidebands[live_id] = sideband
        sideband.start()
        if sideband.task is not None:
            sideband.task.add_done_callback(lambda _: self.sidebands.pop(live_id, None))

    async def close(self) -> None:
        for sideband in list(self.sidebands.values()):
            await sideband.stop()


def live_context_of(context: WebRtcContext) -> LiveContext:
    """The process's Live context, kept on its WebRTC context (made on first use)."""
    if not isinstance(context.live, LiveContext):
        context.live = LiveContext(context.services)
    live: LiveContext = context.live
    return live


def _webrtc_offer(body: dict[str, Any]) -> str:
    transport = body.get("transport")
    if not isinstance(transport, dict) or transport.get("type") != "webrtc":
        message = "voxgate creates Live sessions over WebRTC only: 'transport.type' must be 'webrtc'."
        raise GatewayError(400, message, code="invalid_value", param="transport.type")
    sdp = transport.get("sdp")
    if not isinstance(sdp, str):
        raise GatewayError(400, "'transport.sdp' must be the SDP offer.", code="invalid_value", param="transport.sdp")
    return validate_sdp(sdp.encode("utf-8"))


async def create_live(
    context: WebRtcContext, live: LiveContext, caller: Caller, body: dict[str, Any], fork_of: LiveRecord | None
) -> bytes:
    """Create (or fork) a policed, admitted, recorded and metered Live WebRTC session; upstream's JSON answer."""
    services = context.services
    sdp = _webrtc_offer(body)
    policy = await tenant_policy(services, caller.tenant_id)
    session = body.get("session", {} if fork_of is not None else None)
    policed = police_webrtc_session(session, policy, services.prices, fork=fork_of is not None)
    model = fork_of.model if fork_of is not None else policed.model
    if services.live.draining:
        raise draining_error()
    session_id = new_id("vgs")
    admitted = await services.enforcement.admit(
        caller.tenant_id, session_id, model, services.clock.time(), basis="durations"
    )
    path = LIVE_SESSIONS if fork_of is None else f"{LIVE_SESSIONS}/{fork_of.live_session_id}/fork"
    sent = {"session": policed.session, "transport": {"type": "webrtc", "sdp": sdp}}
    try:
        response = await context.upstream.send("POST", path, caller.safety_id, accept="application/json", body=sent)
        live_id = _live_id(response.content)
        record = LiveRecord(
            live_session_id=live_id,
            tenant_id=caller.tenant_id,
            session_id=session_id,
            model=model,
            api_key_id=caller.api_key_id,
            safety_id=caller.safety_id,
            forked_from=fork_of.live_session_id if fork_of is not None else None,
        )
        await _record(context, live, record, caller)
    except BaseException:
        if admitted.leased:
            await services.enforcement.release(caller.tenant_id, session_id)
        raise
    live.hold(LiveSideband(services, live.store, context.upstream, record, admitted.policy, admitted.leased))
    return response.content


async def _record(context: WebRtcContext, live: LiveContext, record: LiveRecord, caller: Caller) -> None:
    """Record the session's owner; a session that cannot be recorded is hung up (it could be neither
    metered nor controlled) and the caller gets a retryable 503."""
    try:
        recorded = await live.store.record(record, context.clock.time())
    except Exception:
        log.exception("could not record live session %s; hanging it up", record.live_session_id)
        path = f"{LIVE_SESSIONS}/{record.live_session_id}/hangup"
        with contextlib.suppress(GatewayError):
            await context.upstream.send("POST", path, caller.safety_id, accept="*/*")
        raise GatewayError(
            503, "The gateway could not record the session; retry.", code="session_not_recorded", retry_after=1.0
        ) from None
    if not recorded:
        raise GatewayError(502, "The upstream reused a Live session id.", code="upstream_bad_response")


def _live_id(content: bytes) -> str:
    try:
        live_id = orjson.loads(content)["session"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        live_id = None
    if not isinstance(live_id, str) or not live_id:
        raise GatewayError(502, "The upstream answered without a Live session id.", code="upstream_bad_response")
    return live_id
