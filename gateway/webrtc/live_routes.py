"""GPT-Live's HTTP and sideband routes (docs/webrtc.md#gpt-live-over-webrtc).

* ``POST /v1/live/sessions``: a WebRTC create (`client.live.create(...)`), tenant key or
  browser JWT; policed, admitted, recorded, metered on a gateway-held sideband. With
  `transport.type: "sip"` (tenant key): an outbound SIP call, handled the same way.
* ``POST /v1/live/sessions/{id}/fork`` and the WebSocket ``…/fork``: a new billed session.
* The WebSocket ``…/attach``, ``POST …/hangup|accept|reject|refer``, ``GET …/content``:
  proxied only for the caller's own sessions; anything else is a 404 before upstream. An
  inbound SIP session is the tenant's once OpenAI's webhook routed it (gateway/sip/inbound.py);
  its accept is a policed, admitted and metered session start (gateway/webrtc/live_sip.py).

The WebSocket ``GET /v1/live/sessions`` is the Live WebSocket transport's (gateway/live).
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request, Response, WebSocket, get, post, websocket
from litestar.params import FromPath

from gateway.webrtc import live_controls
from gateway.webrtc.bodies import read_json_body
from gateway.webrtc.context import context_of
from gateway.webrtc.live_calls import create_live, live_context_of
from gateway.webrtc.live_controls import visible_live
from gateway.webrtc.live_sip import accept_sip, after_control, visible_sip
from gateway.webrtc.live_sip_outbound import create_outbound_sip
from gateway.webrtc.routes import caller_of
from gateway.webrtc.sessions import counting_refusals

TAGS: Final = ["live", "webrtc"]
LiveId = FromPath[str]
_JSON: Final = "application/json"


@post("/v1/live/sessions", operation_id="live_sessions_create", tags=TAGS, status_code=201)
async def create_session(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Create a Live WebRTC session (`{"session", "transport": {"type": "webrtc", "sdp"}}`) under the policy,
    or place an outbound SIP call (`transport.type: "sip"`, tenant key only)."""
    context = context_of(request.app)
    with counting_refusals(context.services):
        caller = await caller_of(request, context, allow_browser=True)
        body = await read_json_body(request)
        transport = body.get("transport") if isinstance(body, dict) else None
        if isinstance(transport, dict) and transport.get("type") == "sip":  # outbound SIP (live_sip_outbound)
            answer = await create_outbound_sip(context, live_context_of(context), caller, body)
        else:
            answer = await create_live(context, live_context_of(context), caller, body, None)
    return Response(answer, status_code=201, media_type=_JSON)


@post("/v1/live/sessions/{live_id:str}/fork", operation_id="live_sessions_fork", tags=TAGS, status_code=201)
async def fork_session(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """Fork one of the caller's sessions over WebRTC: a new session, billed on its own."""
    context = context_of(request.app)
    live = live_context_of(context)
    with counting_refusals(context.services):
        caller = await caller_of(request, context, allow_browser=True)
        parent = await visible_live(live.store, caller, live_id)
        body = await read_json_body(request)
        answer = await create_live(context, live, caller, body, parent)
    return Response(answer, status_code=201, media_type=_JSON)


async def _control(request: Request[Any, Any, Any], live_id: str, action: str) -> Response[bytes]:
    context = context_of(request.app)
    live = live_context_of(context)
    caller = await caller_of(request, context, allow_browser=action == "hangup")
    # ownership first: nothing upstream before it (a ringing SIP session is owned via live_sip_calls)
    record = await visible_sip(live.store, context.services.pool, caller, live_id)
    body = await read_json_body(request) if action != "hangup" else None
    if action == "accept":  # a SIP session start: policed, admitted and metered (live_sip)
        with counting_refusals(context.services):
            return Response(await accept_sip(context, live, caller, record, body), media_type=_JSON)
    answer = await live_controls.control(context, caller, record, action, body)
    await after_control(context, record, action)
    return Response(answer, media_type=_JSON)


@post("/v1/live/sessions/{live_id:str}/hangup", operation_id="live_sessions_hangup", tags=TAGS, status_code=200)
async def hangup(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """End one of the caller's sessions (tenant key, or the browser JWT of the user who created it)."""
    return await _control(request, live_id, "hangup")


@post("/v1/live/sessions/{live_id:str}/accept", operation_id="live_sessions_accept", tags=TAGS, status_code=200)
async def accept(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """Accept a ringing SIP session routed to the tenant (tenant key): policed, admitted, metered."""
    return await _control(request, live_id, "accept")


@post("/v1/live/sessions/{live_id:str}/reject", operation_id="live_sessions_reject", tags=TAGS, status_code=200)
async def reject(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """Reject a SIP session the tenant owns (tenant key)."""
    return await _control(request, live_id, "reject")


@post("/v1/live/sessions/{live_id:str}/refer", operation_id="live_sessions_refer", tags=TAGS, status_code=200)
async def refer(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """Transfer a SIP session the tenant owns (tenant key)."""
    return await _control(request, live_id, "refer")


@get("/v1/live/sessions/{live_id:str}/content", operation_id="live_sessions_content", tags=TAGS)
async def recording(request: Request[Any, Any, Any], live_id: LiveId) -> Response[bytes]:
    """The recording of one of the tenant's stored sessions (`store: true`), as upstream sends it."""
    context = context_of(request.app)
    caller = await caller_of(request, context, allow_browser=False)
    record = await visible_live(live_context_of(context).store, caller, live_id)
    return Response(await live_controls.content(context, caller, record), media_type="application/binary")


@websocket("/v1/live/sessions/{live_id:str}/attach", operation_id="live_sessions_attach", tags=TAGS)
async def attach_socket(socket: WebSocket[Any, Any, Any], live_id: LiveId) -> None:
    """A tenant's own sideband on one of its sessions (tenant key)."""
    await live_controls.serve_attach(socket.app, dict(socket.scope), socket.receive, socket.send, live_id)


@websocket("/v1/live/sessions/{live_id:str}/fork", operation_id="live_sessions_fork_socket", tags=TAGS)
async def fork_socket(socket: WebSocket[Any, Any, Any], live_id: LiveId) -> None:
    """A WebSocket fork of one of the tenant's sessions: a new session, policed and billed on its own."""
    await live_controls.serve_fork(socket.app, dict(socket.scope), socket.receive, socket.send, live_id)


ROUTES: Final = [create_session, fork_session, hangup, accept, reject, refer, recording, attach_socket, fork_socket]
