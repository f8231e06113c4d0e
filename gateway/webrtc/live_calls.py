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

import asyncio
import logging
from typing import Any, Final

import orjson

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.records import SessionEnded, SessionStarted
from gateway.services import GatewayServices
from gateway.session.admission import draining_error
from gateway.session.live_call import book_durably, ledger_record
from gateway.webrtc.access import Caller
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.live_config import police_webrtc_session
from gateway.webrtc.live_failover import LiveFailover
from gateway.webrtc.live_sideband import LiveSideband
from gateway.webrtc.live_store import LiveRecord, LiveStore
from gateway.webrtc.sdp import validate_sdp
from gateway.webrtc.sessions import tenant_policy
from policies.live.meter import LiveIdentity, LiveMeter

log = logging.getLogger("voxgate.live")

LIVE_SESSIONS: Final = "/live/sessions"
# How long recording a session's owner may take before the session is given up (and hung up).
RECORD_TIMEOUT_S: Final = 5.0
NOT_RECORDED: Final = "not_recorded"  # the end reason of a session hung up because it could not be recorded


class LiveContext:
    """One process's Live session records and the sidebands it holds."""

    def __init__(self, services: GatewayServices) -> None:
        self.services = services
        self.store = LiveStore(services.pool)
        self.sidebands: dict[str, LiveSideband] = {}
        # Claims on the sidebands held here; started with the app, it takes over orphaned ones.
        self.failover = LiveFailover(services, self.store, self.sidebands, self.hold)

    def hold(self, sideband: LiveSideband) -> None:
        live_id = sideband.live.live_session_id
        self.sidebands[live_id] = sideband
        sideband.start()
        if sideband.task is not None:
            sideband.task.add_done_callback(lambda _: self.sidebands.pop(live_id, None))

    async def close(self) -> None:
        await self.failover.stop()
        await asyncio.gather(*(sideband.stop() for sideband in list(self.sidebands.values())))


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
    live.hold(
        LiveSideband(
            services, live.store, context.upstream, record, admitted.policy, admitted.leased, claims=live.failover
        )
    )
    return response.content


async def _record(context: WebRtcContext, live: LiveContext, record: LiveRecord, caller: Caller) -> None:
    """Record the session's owner. A session that cannot be recorded (Postgres refused or did not
    answer in `RECORD_TIMEOUT_S`) could be neither metered nor controlled: it is hung up upstream,
    what OpenAI bills for it (the initialisation charge) is booked to the tenant, and the caller
    gets a retryable 503. An id upstream answered with that is already recorded (possibly another
    tenant's session) is not this caller's to hang up or be billed for: nothing is done upstream,
    nothing is booked, and the caller gets a 502."""
    try:
        async with asyncio.timeout(RECORD_TIMEOUT_S):
            recorded = await live.store.record(record, context.clock.time())
    except Exception as exc:  # a refusal, a lost connection, the timeout
        log.error("could not record live session %s (%r); hanging it up", record.live_session_id, exc)
        await _hang_up_unowned(context, record, caller)
        await _book_unowned(context.services, record, "the gateway could not record the session's owner")
        raise GatewayError(
            503, "The gateway could not record the session; retry.", code="session_not_recorded", retry_after=1.0
        ) from None
    if recorded:
        return
    log.error("upstream answered a create with live session id %s, already recorded", record.live_session_id)
    raise GatewayError(502, "The upstream reused a Live session id.", code="upstream_bad_response")


async def _hang_up_unowned(context: WebRtcContext, record: LiveRecord, caller: Caller) -> None:
    path = f"{LIVE_SESSIONS}/{record.live_session_id}/hangup"
    try:
        await context.upstream.send("POST", path, caller.safety_id, accept="*/*")
    except GatewayError as exc:
        if exc.status != 404:  # already gone is what a hangup wants
            log.error("hanging up unrecorded live session %s failed: %s", record.live_session_id, exc.message)


async def _book_unowned(services: GatewayServices, record: LiveRecord, problem: str) -> None:
    """Book an unrecorded session as started, charged its 15 s initialisation and ended at once.

    The charge is a durable ledger row (it is all the tenant is billed for this session) and
    is added to the tenant's budget spend; the session's concurrency lease is released by
    `create_live`."""
    now = services.clock.time()
    ledger = services.ledger
    ledger.submit(
        SessionStarted(
            session_id=record.session_id,
            tenant_id=record.tenant_id,
            api_key_id=record.api_key_id,
            transport="webrtc",
            intent="live",
            model=record.model,
            end_user_hash=record.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
        )
    )
    identity = LiveIdentity(record.session_id, record.tenant_id, record.model, "webrtc")
    charges = LiveMeter(identity, services.prices).opening(now)
    durable = [book_durably(ledger, ledger_record(charge)) for charge in charges]
    ledger.submit(SessionEnded(record.session_id, now, NOT_RECORDED, problem))
    for charge in charges:
        try:
            await services.enforcement.state.settle(
                record.tenant_id, f"{record.session_id}:init", charge.cost_micro_usd, now
            )
        except Exception as exc:  # the ledger has it; the spend counters are rebuilt from the ledger
            log.warning("session %s: could not add the initialisation charge to the spend: %r", record.session_id, exc)
    await asyncio.gather(*durable)


def _live_id(content: bytes) -> str:
    try:
        live_id = orjson.loads(content)["session"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        live_id = None
    if not isinstance(live_id, str) or not live_id:
        raise GatewayError(502, "The upstream answered without a Live session id.", code="upstream_bad_response")
    return live_id
