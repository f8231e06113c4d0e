"""The SDP broker: place a tenant's call upstream, record it for every replica, hang it up.

`POST /v1/realtime/calls` polices the offer's session (a multipart offer's own, or the one
the policy adds to a raw offer), admits it like a WebSocket session and places the call.
The call is recorded (Postgres and the call cache) and handed to the process's sideband
monitor (`GatewayServices.calls_monitor`, always there), which then owns the concurrency lease
(docs/webrtc.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.records import SessionEnded
from gateway.services import GatewayServices
from gateway.webrtc.access import Caller
from gateway.webrtc.bodies import Offer
from gateway.webrtc.calls_store import Call
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.sessions import admit, refusal, release, session_started, tenant_policy
from gateway.webrtc.upstream_http import PlacedCall
from policies.policy import TenantPolicy
from policies.session_config import SessionRefused, default_model, police_session, policy_session

log = logging.getLogger("voxgate.webrtc")


@dataclass(frozen=True, slots=True)
class AdmittedCall:
    """An offer whose session is policed and admitted, not yet placed upstream."""

    caller: Caller
    sdp: str
    session: dict[str, Any] | None  # None: upstream gets the raw offer
    model: str | None  # None: a transcription session
    session_id: str
    policy: TenantPolicy
    leased: bool


async def admit_call(context: WebRtcContext, caller: Caller, offer: Offer) -> AdmittedCall:
    """Police the offer's session and admit it; a refusal is a `GatewayError`."""
    services = context.services
    policy = await tenant_policy(services, caller.tenant_id)
    policed = (
        police_session(offer.session, policy, services.prices)
        if offer.session is not None
        else policy_session(policy, services.prices)
    )
    if isinstance(policed, SessionRefused):
        raise refusal(policed)
    session = policed.session if policed is not None else None
    model = policed.model if policed is not None else default_model(policy, services.prices)
    session_id = new_id("vgs")
    policy, leased = await admit(services, caller.tenant_id, session_id, model, session)
    return AdmittedCall(caller, offer.sdp, session, model, session_id, policy, leased)


async def place_call(context: WebRtcContext, admitted: AdmittedCall) -> PlacedCall:
    """Place the call upstream, record it and hand it to the monitor; the lease is never leaked."""
    services, caller = context.services, admitted.caller
    leased = admitted.leased
    try:
        placed = await context.upstream.create_call(admitted.sdp, admitted.session, caller.safety_id)
    except BaseException:
        await release(services, caller.tenant_id, admitted.session_id, leased)
        raise
    now = context.clock.time()
    call = Call(
        call_id=placed.call_id,
        tenant_id=caller.tenant_id,
        session_id=admitted.session_id,
        policy=admitted.policy,
        safety_id=caller.safety_id,
        leased=leased,
        source="brokered",
        api_key_id=caller.api_key_id,
        model=admitted.model,
        created_at=now,
    )
    await _record(context, call, caller)
    intent = (admitted.session or {}).get("type", "realtime")
    session_started(services, caller, admitted.session_id, "webrtc", intent, admitted.model, now)
    await hand_to_monitor(services, call)
    return placed


async def _record(context: WebRtcContext, call: Call, caller: Caller) -> None:
    """Record a placed call; one that cannot be recorded is hung up (and its lease released)."""
    try:
        recorded = await context.calls.record(call)
    except Exception:
        log.exception("could not record call %s; hanging it up", call.call_id)
        await context.upstream.hangup(call.call_id, caller.safety_id)
        await release(context.services, caller.tenant_id, call.session_id, call.leased)
        raise GatewayError(
            503, "The gateway could not record the call; retry.", code="call_not_recorded", retry_after=1.0
        ) from None
    if not recorded:
        raise GatewayError(502, "The upstream reused a call id.", code="upstream_bad_response")


async def hang_up(context: WebRtcContext, caller: Caller, call: Call) -> None:
    """End an active call: marked first (so its reason is "hangup"), then hung up upstream."""
    if call.state != "active":
        return  # hanging up twice is harmless
    now = context.clock.time()
    # Marked first, so the reason is "hangup" and not what the sideband sees when the call drops.
    ended_here = await context.calls.end(call.call_id, "hangup", now)
    if not await context.upstream.hangup(call.call_id, caller.safety_id):
        if ended_here:
            await context.calls.reopen(call.call_id, "hangup")
        raise GatewayError(502, "The upstream did not confirm the hangup; retry.", code="upstream_hangup_failed")
    if ended_here:
        context.services.ledger.submit(SessionEnded(call.session_id, now, "client_hangup", f"call {call.call_id}"))


async def hand_to_monitor(services: GatewayServices, call: Call) -> None:
    """Give the call to the sideband monitor, which meters and polices it."""
    try:
        await services.calls_monitor.attach(call)
    except Exception:
        # The call is live either way; losing its metering is logged loudly, not hidden.
        log.exception("the sideband monitor could not attach call %s", call.call_id)
