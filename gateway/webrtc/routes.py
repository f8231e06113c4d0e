"""The Realtime API's HTTP side: client secrets, the WebRTC SDP broker, call control, attach.

Routes (docs/webrtc.md):

* ``POST /v1/realtime/client_secrets``: mint an ephemeral key upstream, tenant API key only.
* ``POST /v1/realtime/calls``: broker an SDP offer (multipart with a session, or raw
  ``application/sdp``; a raw offer may come from a browser with a tenant-signed JWT).
* ``GET /v1/realtime/calls/{call_id}`` and ``POST …/{call_id}/hangup``: the tenant's own
  calls only; any other call id is a 404.
* ``POST /v1/voxgate/calls/{call_id}/attach``: a tenant backend hands voxgate a call its
  browser opened directly with a secret voxgate minted.

Each handler only parses (who is calling, what was sent), calls one flow and answers:
`client_secrets`, `broker` and `attach` hold the flows, `policies.session_config` the
decisions about a session's config, `upstream_http` the one client for upstream.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from litestar import Request, Response, get, post
from litestar.config.app import AppConfig
from litestar.params import FromPath, FromQuery

from gateway.auth.credentials import END_USER_HEADER
from gateway.session.admission import session_tags
from gateway.webrtc import attach, broker
from gateway.webrtc.access import Caller, Presented, authenticate, visible_call
from gateway.webrtc.bodies import offer_media_type, read_json_body, read_offer, with_query_model
from gateway.webrtc.client_secrets import mint_client_secret
from gateway.webrtc.context import WebRtcContext, close_context, context_of
from gateway.webrtc.sdp import SDP_MEDIA_TYPE
from gateway.webrtc.sessions import counting_refusals

TAGS: Final = ["realtime", "webrtc"]
CallId = FromPath[str]
_END_USER: Final = END_USER_HEADER.encode()


async def caller_of(request: Request[Any, Any, Any], context: WebRtcContext, *, allow_browser: bool) -> Caller:
    """Who is calling: a tenant key, or a browser JWT where `allow_browser` (else 401/403)."""
    raw_end_user = next((v for k, v in request.scope["headers"] if k.lower() == _END_USER), b"")
    services = context.services
    return await authenticate(
        Presented(request.headers.get("authorization"), raw_end_user),
        services.tenants,
        context.browser_tokens,
        services.settings.security.safety_identifier_secret,
        allow_browser=allow_browser,
    )


@post("/v1/realtime/client_secrets", operation_id="realtime_client_secrets_create", tags=TAGS, status_code=200)
async def create_client_secret(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Mint an ephemeral client secret (OpenAI's request and response), policed by the tenant's policy.

    Tenant API key only. The minted secret is not a live session: admission runs (budget,
    concurrency, start rate, headroom) and its concurrency lease is released at once.
    """
    context = context_of(request.app)
    with counting_refusals(context.services):
        caller = replace(
            await caller_of(request, context, allow_browser=False), tags=session_tags(request.scope["headers"])
        )
        body = await read_json_body(request)
    minted = await mint_client_secret(context, caller, body)
    return Response(minted, status_code=200, media_type="application/json")


@post("/v1/realtime/calls", operation_id="realtime_calls_create", tags=TAGS, status_code=201)
async def create_call(request: Request[Any, Any, Any], model: FromQuery[str | None] = None) -> Response[bytes]:
    """Broker a WebRTC SDP offer: multipart (`sdp` + `session`, tenant key) or raw `application/sdp`
    (tenant key or browser JWT). Answers 201 with the SDP answer and `Location` at voxgate.
    `?model=` names the session's model (`with_query_model`)."""
    context = context_of(request.app)
    with counting_refusals(context.services):
        media = offer_media_type(request)
        caller = await caller_of(request, context, allow_browser=media == SDP_MEDIA_TYPE)
        caller = replace(caller, tags=session_tags(request.scope["headers"]))
        offer = with_query_model(await read_offer(request, media), model)
        admitted = await broker.admit_call(context, caller, offer)
    placed = await broker.place_call(context, admitted)
    return Response(
        placed.answer,
        status_code=201,
        media_type=SDP_MEDIA_TYPE,
        headers={"Location": f"/v1/realtime/calls/{placed.call_id}"},
    )


@get("/v1/realtime/calls/{call_id:str}", operation_id="realtime_calls_retrieve", tags=TAGS)
async def get_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[dict[str, Any]]:
    """A call's state. Only the owning tenant (or the browser user who placed it) sees it; else 404."""
    context = context_of(request.app)
    caller = await caller_of(request, context, allow_browser=True)
    call = await visible_call(context.calls, caller, call_id)
    return Response(call.public(), status_code=200)


@post("/v1/realtime/calls/{call_id:str}/hangup", operation_id="realtime_calls_hangup", tags=TAGS, status_code=200)
async def hangup_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[bytes]:
    """End one of the tenant's calls (tenant key, or the browser JWT of the user who placed it)."""
    context = context_of(request.app)
    caller = await caller_of(request, context, allow_browser=True)
    call = await visible_call(context.calls, caller, call_id)
    await broker.hang_up(context, caller, call)
    return Response(b"", status_code=200, media_type="application/json")


@post(
    "/v1/voxgate/calls/{call_id:str}/attach",
    operation_id="voxgate_calls_attach",
    tags=["voxgate", "webrtc"],
    status_code=200,
)
async def attach_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[dict[str, Any]]:
    """Hand voxgate a call a browser opened directly with a client secret voxgate minted.

    Tenant API key only, and at most `ATTACH_BURST` attempts at once per tenant (then
    `ATTACH_PER_SECOND`; 429 past it). A tenant holding no minted secret that is still
    attachable gets 404 before anything upstream. Otherwise voxgate looks up the call's
    session over the sideband; unless that session is one voxgate minted for this tenant,
    the answer is 404. Then the call is recorded and metered and policed by the sideband
    monitor like a brokered call.
    """
    context = context_of(request.app)
    caller = await caller_of(request, context, allow_browser=False)
    call = await attach.attach_call(context, caller, call_id)
    return Response(call.public(), status_code=200)


ROUTES: Final = [create_client_secret, create_call, get_call, hangup_call, attach_call]


def register(app_config: AppConfig) -> None:
    """Add the routes and close the upstream HTTP client at shutdown (called by `VoxgatePlugin`)."""
    from gateway.webrtc.live_failover import start_live_failover
    from gateway.webrtc.live_routes import ROUTES as LIVE_ROUTES  # they reuse `caller_of`

    app_config.route_handlers.extend([*ROUTES, *LIVE_ROUTES])
    app_config.on_shutdown.append(close_context)
    app_config.on_startup.append(start_live_failover)  # Live WebRTC sidebands taken over from dead replicas
