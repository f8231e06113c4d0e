"""`POST /v1/voxgate/calls/{call_id}/attach`: take over a call a browser opened with a minted secret.

Only a call whose upstream session is one voxgate minted for this tenant is attached; any
other answer is the 404 of an unknown call. The checks are ordered so that a stranger's
attempt costs nothing upstream: the per-tenant rate limit, then the tenant's own records
(no attachable secret: no handshake), and only then a read-only sideband probe of the call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import orjson
from websockets.exceptions import ConnectionClosed

from gateway.errors import GatewayError
from gateway.settings import UpstreamSettings
from gateway.upstream import open_upstream
from gateway.webrtc.access import Caller, call_not_found
from gateway.webrtc.broker import hand_to_monitor
from gateway.webrtc.calls_store import Call
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.sessions import tenant_policy
from gateway.webrtc.upstream_http import is_call_id

PROBE_TIMEOUT_S: Final = 5.0


async def attach_call(context: WebRtcContext, caller: Caller, call_id: str) -> Call:
    """The attached call (or the tenant's call already recorded under `call_id`); else a 404."""
    context.attach_limiter.take(caller.tenant_id, context.clock.monotonic())
    if not is_call_id(call_id):
        raise call_not_found(call_id)
    calls = context.calls
    existing = await calls.get(call_id)
    if existing is not None:
        if existing.tenant_id != caller.tenant_id:
            raise call_not_found(call_id)
        return existing  # attaching twice is harmless
    # Our own records first: without a minted secret of its own to attach, a tenant's
    # attempt never reaches upstream (no handshake, nothing sent into anyone's call).
    if not await calls.has_attachable_secret(caller.tenant_id):
        raise call_not_found(call_id)
    upstream = context.services.settings.upstream
    upstream_session_id = await probe_call_session(upstream, call_id, caller.safety_id)
    minted = await calls.minted(upstream_session_id) if upstream_session_id else None
    if minted is None or minted.tenant_id != caller.tenant_id:
        raise call_not_found(call_id)
    call = Call(
        call_id=call_id,
        tenant_id=caller.tenant_id,
        session_id=minted.session_id,
        created_at=context.clock.time(),
        policy=await tenant_policy(context.services, caller.tenant_id),
        safety_id=minted.end_user_hash or caller.safety_id,
        leased=False,
        source="attached",
        api_key_id=caller.api_key_id,
        upstream_session_id=upstream_session_id,
    )
    if not await calls.record_attached(call):
        again = await calls.get_for_tenant(call_id, caller.tenant_id)
        if again is None:
            raise call_not_found(call_id)
        return again
    await hand_to_monitor(context.services, call)
    return call


async def probe_call_session(
    upstream: UpstreamSettings, call_id: str, safety_id: str, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """The upstream session id of a live call, read over a short-lived sideband WebSocket.

    Read-only: it waits up to `timeout_s` for the first event that carries `session.id`
    (`session.created`/`session.updated`) and never sends anything into the call, which may be
    another tenant's until the id is checked. An upstream that does not know the call answers
    404, which becomes `call_not_found`; no session event in time is None (also a 404).
    """
    try:
        ws = await open_upstream(upstream, {"call_id": call_id}, safety_id)
    except GatewayError as error:
        if 400 <= error.status < 500:
            raise call_not_found(call_id) from None
        raise
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = _session_id_of(await ws.recv())
                if found is not None:
                    return found
    except (TimeoutError, ConnectionClosed):
        return None
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


def _session_id_of(message: str | bytes) -> str | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") not in ("session.created", "session.updated"):
        return None
    session = event.get("session")
    found = session.get("id") if isinstance(session, dict) else None
    return found if isinstance(found, str) and found else None
