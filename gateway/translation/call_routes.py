"""Translation calls over WebRTC through voxgate (docs/translation.md#webrtc-calls).

* ``POST /v1/realtime/translations/calls[?model=…]``: a raw ``application/sdp`` offer with a
  tenant key or a browser JWT; answers 201 with the SDP answer and ``Location`` at voxgate.
* ``POST /v1/realtime/translations/calls/{call_id}/hangup``: the call's own tenant (or the
  browser user who placed it) only; any other call id is a 404, before anything upstream.

Every replica sweeps the calls past their cap (`calls.sweep_forever`), started with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any, Final
from urllib.parse import parse_qsl

from litestar import Litestar, Request, Response, post
from litestar.params import FromPath

from gateway.errors import GatewayError
from gateway.query_params import PARSES_OWN_QUERY
from gateway.services import find_services
from gateway.session.admission import session_tags
from gateway.translation.call_store import TranslationCall
from gateway.translation.calls import DEFAULT_MODEL, TranslationCalls, sweep_forever
from gateway.webrtc.access import Caller, call_not_found
from gateway.webrtc.bodies import read_body
from gateway.webrtc.context import context_of
from gateway.webrtc.routes import caller_of
from gateway.webrtc.sdp import MAX_SDP_BYTES, SDP_MEDIA_TYPE, sdp_too_large, validate_sdp
from gateway.webrtc.sessions import counting_refusals
from gateway.webrtc.upstream_http import is_call_id

TAGS: Final = ["realtime", "translation", "webrtc"]
_STATE_KEY: Final = "translation_calls"
_SWEEPER_KEY: Final = "translation_calls_sweeper"


def calls_of(app: Litestar) -> TranslationCalls:
    context = context_of(app)
    calls = getattr(app.state, _STATE_KEY, None)
    if not isinstance(calls, TranslationCalls) or calls.context is not context:
        calls = TranslationCalls(context)
        setattr(app.state, _STATE_KEY, calls)
    return calls


def offer_model(query_string: bytes) -> str:
    """The optional `model` query parameter (the only one accepted); the translation model by default."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, max_num_fields=8)
    unknown = [name for name, _ in pairs if name != "model"]
    if unknown:
        name = unknown[0][:64]
        raise GatewayError(400, f"Unknown parameter: '{name}'.", code="unknown_parameter", param=name)
    models = [value for _, value in pairs]
    if len(models) > 1 or (models and not models[0]):
        raise GatewayError(400, "Give at most one non-empty 'model'.", code="invalid_value", param="model")
    return models[0] if models else DEFAULT_MODEL


def may_see(caller: Caller, call: TranslationCall) -> bool:
    """A tenant key sees all of its tenant's calls; a browser token only its own user's calls."""
    if call.tenant_id != caller.tenant_id:
        return False
    return caller.via == "api_key" or (bool(call.end_user_hash) and call.end_user_hash == caller.safety_id)


@post(
    "/v1/realtime/translations/calls",
    operation_id="realtime_translations_calls_create",
    tags=TAGS,
    status_code=201,
    opt={PARSES_OWN_QUERY: True},  # `model` (offer_model)
)
async def create_translation_call(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Broker a translation call's raw SDP offer under the tenant's policy, metered by wall-clock time."""
    calls = calls_of(request.app)
    services = calls.services
    with counting_refusals(services):
        media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if media != SDP_MEDIA_TYPE:
            raise GatewayError(
                415, "Send the SDP offer as 'application/sdp'.", code="unsupported_media_type", param="content-type"
            )
        caller = await caller_of(request, calls.context, allow_browser=True)
        caller = replace(caller, tags=session_tags(request.scope["headers"]))
        model = offer_model(request.scope.get("query_string", b""))
        sdp = validate_sdp(await read_body(request, MAX_SDP_BYTES, sdp_too_large()))
        placed = await calls.place(caller, sdp, model)
    return Response(
        placed.answer,
        status_code=201,
        media_type=SDP_MEDIA_TYPE,
        headers={"Location": f"/v1/realtime/translations/calls/{placed.call_id}"},
    )


@post(
    "/v1/realtime/translations/calls/{call_id:str}/hangup",
    operation_id="realtime_translations_calls_hangup",
    tags=TAGS,
    status_code=200,
)
async def hangup_translation_call(request: Request[Any, Any, Any], call_id: FromPath[str]) -> Response[bytes]:
    """End one of the tenant's translation calls; the meter stops when upstream confirms."""
    calls = calls_of(request.app)
    caller = await caller_of(request, calls.context, allow_browser=True)
    call = await calls.store.get(call_id) if is_call_id(call_id) else None
    if call is None or not may_see(caller, call):
        raise call_not_found(call_id)  # the same answer for another tenant's call: nothing upstream
    await calls.hang_up(call)
    return Response(b"", status_code=200, media_type="application/json")


CALL_ROUTES: Final = [create_translation_call, hangup_translation_call]


async def start_sweeper(app: Litestar) -> None:
    """Start this replica's sweep of translation calls past their cap (an `on_startup` hook)."""
    if find_services(app) is None:
        return
    task = asyncio.create_task(sweep_forever(calls_of(app)), name="voxgate-translation-calls")
    setattr(app.state, _SWEEPER_KEY, task)


async def stop_sweeper(app: Litestar) -> None:
    """Stop the sweep (it also stops by itself when the process drains, before the pools close)."""
    task = getattr(app.state, _SWEEPER_KEY, None)
    if isinstance(task, asyncio.Task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
