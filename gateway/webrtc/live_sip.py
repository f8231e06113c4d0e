"""Inbound SIP on GPT-Live: the sessions OpenAI's webhooks routed to a tenant, and their accept.

A `live.transport.incoming` webhook (gateway/sip/inbound.py) records the ringing session as a
pending `live_sip_calls` row owned by the tenant its called number is routed to (migrations 0019,
0021). A pending session is *not* in `live_sessions`: a replica of an older release, whose generic
owner lookup would let an accept through unadmitted and unmetered, sees it as unknown (a 404).
`visible_sip` lets the owner's `/accept|reject|refer|hangup` through. An accept is a session start:
its `session` is policed like a `session.start`, the session is admitted (budget, concurrency caps,
the per-model cap) under a new voxgate session id, its `live_sessions` owner row is written, the
accept is forwarded and the session metered on a sideband voxgate holds (`LiveSideband`).

Only a failed upstream accept is rolled back (lease released, owner row removed, back to
`pending`). Once upstream accepted, the sideband is always held; the `accepted` state write is
retried and otherwise left to `recover_stuck_accepts` (gateway/webrtc/live_sip_recovery.py),
which also hangs up sessions a replica left in `accepting` when it died. Only a pending session
can be accepted, once (docs/live.md#sip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

import asyncpg

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.sql import timestamp
from gateway.session.admission import draining_error
from gateway.webrtc.access import Caller
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.live_calls import LiveContext, _hang_up_unowned
from gateway.webrtc.live_config import refusal_error
from gateway.webrtc.live_controls import CONTROLS, live_not_found, visible_live
from gateway.webrtc.live_sideband import LiveSideband, live_path
from gateway.webrtc.live_store import LiveRecord, LiveStore
from gateway.webrtc.sessions import tenant_policy
from policies.live.config import LiveRefusal, LiveRules, police_start

log = logging.getLogger("voxgate.sip")

SEEN_WEBHOOK: Final = """
INSERT INTO openai_webhook_events (webhook_id, event_type) VALUES ($1, $2)
ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id
"""
CALL_ID_TAKEN: Final = "SELECT 1 FROM live_sip_calls WHERE sip_call_id = $1"
LIVE_KNOWN: Final = "SELECT 1 FROM live_sessions WHERE live_session_id = $1"
INSERT_SIP_CALL: Final = """
INSERT INTO live_sip_calls (live_session_id, tenant_id, delivery_id, sip_call_id, called, event, received_at,
                            next_attempt_at, state_changed_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $7, $7)
ON CONFLICT (live_session_id) DO NOTHING RETURNING live_session_id
"""
SIP_ROW: Final = "SELECT tenant_id, state, session_id FROM live_sip_calls WHERE live_session_id = $1"
MOVE_STATE: Final = """
UPDATE live_sip_calls SET state = $3, state_changed_at = now()
WHERE live_session_id = $1 AND state = ANY($2::text[]) RETURNING state
"""
BEGIN_ACCEPT: Final = """
UPDATE live_sip_calls SET state = 'accepting', session_id = $2, state_changed_at = now()
WHERE live_session_id = $1 AND state = 'pending' RETURNING state
"""
ROLL_BACK_ACCEPT: Final = """
UPDATE live_sip_calls SET state = 'pending', session_id = NULL, state_changed_at = now()
WHERE live_session_id = $1 AND state = 'accepting' RETURNING state
"""
DROP_OWNER: Final = "DELETE FROM live_sessions WHERE live_session_id = $1 AND session_id = $2 AND transport = 'sip'"

# The state a successful control leaves an inbound SIP session in.
AFTER: Final = {"reject": "rejected", "refer": "referred", "hangup": "ended"}
STATE_WRITES: Final = 3  # attempts at a state write once upstream accepted (then the recovery sweep)
STATE_RETRY_S: Final = 0.2


class SipCalls:
    """The `live_sip_calls` table: inbound SIP sessions routed to tenants, and their delivery outbox."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def seen(self, webhook_id: str, event_type: str) -> bool:
        """Record a verified webhook that routes nothing; False if its `webhook-id` was seen before."""
        return await self._pool.fetchval(SEEN_WEBHOOK, webhook_id, event_type) is not None

    async def record_inbound(
        self, webhook_id: str, event_type: str, live: LiveRecord, delivery_id: str, call: dict[str, Any], now: float
    ) -> str:
        """One transaction: the webhook id and the pending call (its owner and its delivery).

        Returns "recorded", "replay" (this webhook-id was processed) or "duplicate" (this
        session or SIP Call-ID was routed already, e.g. by the deprecated `live.call.incoming`)."""
        try:
            return await self._record_inbound(webhook_id, event_type, live, delivery_id, call, now)
        except asyncpg.UniqueViolationError:  # the same Call-ID routed concurrently: the other one won
            return "duplicate"

    async def _record_inbound(
        self, webhook_id: str, event_type: str, live: LiveRecord, delivery_id: str, call: dict[str, Any], now: float
    ) -> str:
        async with self._pool.acquire() as connection, connection.transaction():
            if await connection.fetchval(SEEN_WEBHOOK, webhook_id, event_type) is None:
                return "replay"
            call_id = call.get("sip_call_id")
            if call_id is not None and await connection.fetchval(CALL_ID_TAKEN, call_id):
                return "duplicate"
            if await connection.fetchval(LIVE_KNOWN, live.live_session_id):  # a session voxgate knows already
                return "duplicate"
            inserted = await connection.fetchval(
                INSERT_SIP_CALL,
                live.live_session_id,
                live.tenant_id,
                delivery_id,
                call_id,
                call["called"],
                json.dumps(call["event"]),
                timestamp(now),
            )
        return "recorded" if inserted is not None else "duplicate"

    async def row(self, live_session_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(SIP_ROW, live_session_id)

    async def state(self, live_session_id: str) -> str | None:
        row = await self.row(live_session_id)
        return None if row is None else str(row["state"])

    async def move(self, live_session_id: str, from_states: list[str], to_state: str) -> bool:
        return await self._pool.fetchval(MOVE_STATE, live_session_id, from_states, to_state) is not None

    async def begin_accept(self, live_session_id: str, session_id: str) -> bool:
        return await self._pool.fetchval(BEGIN_ACCEPT, live_session_id, session_id) is not None

    async def roll_back_accept(self, live_session_id: str, session_id: str) -> None:
        """Undo an accept upstream never took: no owner row, ringing again."""
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(DROP_OWNER, live_session_id, session_id)
            await connection.fetchval(ROLL_BACK_ACCEPT, live_session_id)


async def visible_sip(store: LiveStore, pool: asyncpg.Pool, caller: Caller, live_id: str) -> LiveRecord:
    """`visible_live`, or else a ringing inbound SIP session routed to the caller's tenant (tenant key)."""
    try:
        return await visible_live(store, caller, live_id)
    except GatewayError as error:
        if error.status != 404 or caller.via == "browser_token":
            raise
        row = await SipCalls(pool).row(live_id)
        if row is None or row["tenant_id"] != caller.tenant_id or row["state"] in ("accepting", "accepted"):
            raise live_not_found(live_id) from None
        return LiveRecord(
            live_session_id=live_id,
            tenant_id=caller.tenant_id,
            session_id=row["session_id"] or "",
            model="",
            state=str(row["state"]),
            transport="sip",
        )


def _not_ringing(live_id: str, state: str | None) -> GatewayError:
    if state is None:
        message = f"Live session '{live_id}' is not an inbound SIP call routed by this gateway."
    else:
        message = f"Live session '{live_id}' is not ringing (it is {state})."
    return GatewayError(409 if state else 400, message, code="invalid_request_error", param="session_id")


async def _state_written(calls: SipCalls, live_id: str, to_state: str) -> bool:
    """Move `accepting` on, retried; False (logged) if Postgres would not take it."""
    for attempt in range(STATE_WRITES):
        try:
            await calls.move(live_id, ["accepting"], to_state)
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("SIP session %s: writing state %s failed (%s)", live_id, to_state, type(exc).__name__)
            if attempt + 1 < STATE_WRITES:
                await asyncio.sleep(STATE_RETRY_S * (attempt + 1))
    log.error("SIP session %s stays 'accepting' until the recovery sweep; it is metered", live_id)
    return False


async def _roll_back(calls: SipCalls, live_id: str, session_id: str) -> None:
    """Ringing again; if Postgres refuses, the recovery sweep settles the `accepting` row instead."""
    try:
        await calls.roll_back_accept(live_id, session_id)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("SIP session %s: undoing a failed accept failed (%s)", live_id, type(exc).__name__)


async def accept_sip(context: WebRtcContext, live: LiveContext, caller: Caller, record: LiveRecord, body: Any) -> bytes:
    """Police, admit, forward and meter the accept of a ringing SIP session the caller owns."""
    services = context.services
    calls = SipCalls(services.pool)
    live_id = record.live_session_id
    state = await calls.state(live_id)
    if state != "pending":
        raise _not_ringing(live_id, state)
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_request_error")
    policy = await tenant_policy(services, caller.tenant_id)
    policed = police_start(body.get("session"), LiveRules.from_policy(policy, services.prices), services.prices)
    if isinstance(policed, LiveRefusal):
        raise refusal_error(policed)
    session = {**policed.session, "type": "live"}  # the accept's `type` is required upstream
    model = str(session["model"])
    if services.live.draining:
        raise draining_error()
    session_id = new_id("vgs")
    if not await calls.begin_accept(live_id, session_id):  # another accept got there first
        raise _not_ringing(live_id, await calls.state(live_id))
    accepted = LiveRecord(
        live_session_id=live_id,
        tenant_id=caller.tenant_id,
        session_id=session_id,
        model=model,
        api_key_id=caller.api_key_id,
        transport="sip",
    )
    try:
        admitted = await services.enforcement.admit(
            caller.tenant_id, session_id, model, services.clock.time(), basis="durations"
        )
    except BaseException:
        await _roll_back(calls, live_id, session_id)
        raise
    try:
        try:
            recorded = await live.store.record(accepted, services.clock.time())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):  # nothing sent upstream yet: retryable
            raise GatewayError(
                503, "The gateway could not record the session; retry.", code="session_not_recorded", retry_after=1.0
            ) from None
        if not recorded:  # upstream reused a recorded id
            raise GatewayError(409, f"Live session '{live_id}' is already recorded.", code="invalid_request_error")
        response = await context.upstream.send(
            "POST", live_path(live_id, "accept"), caller.safety_id, accept=CONTROLS["accept"], body={"session": session}
        )
    except BaseException:  # upstream did not take the accept (or was never asked): undo all of it
        if admitted.leased:
            await services.enforcement.release(caller.tenant_id, session_id)
        await _roll_back(calls, live_id, session_id)
        raise
    # Upstream accepted: the call is live and billed from here, so nothing is rolled back.
    try:
        live.hold(
            LiveSideband(
                services, live.store, context.upstream, accepted, admitted.policy, admitted.leased, claims=live.failover
            )
        )
    except Exception:  # nothing can meter it: end it upstream (a SIP session has no prepaid charge)
        log.exception("SIP session %s: its sideband could not start; hanging it up", live_id)
        await _hang_up_unowned(context, accepted, caller)
        if admitted.leased:
            await services.enforcement.release(caller.tenant_id, session_id)
        await _state_written(calls, live_id, "ended")
        with contextlib.suppress(Exception):  # else the recovery sweep ends it
            await live.store.end(live_id, services.clock.time())
        raise GatewayError(
            503, "The gateway could not meter the session; it was hung up.", code="session_not_recorded"
        ) from None
    await _state_written(calls, live_id, "accepted")
    return response.content


async def after_control(context: WebRtcContext, record: LiveRecord, action: str) -> None:
    """Note what a successful reject, refer or hangup did to an inbound SIP session (no-op otherwise)."""
    if action in AFTER:
        await SipCalls(context.services.pool).move(record.live_session_id, ["pending", "accepted"], AFTER[action])
