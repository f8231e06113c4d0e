"""Outbound SIP on GPT-Live: `POST /v1/live/sessions` with `transport.type: "sip"`, tenant key only.

voxgate checks the transport's shape (an E.164 `destination`, a `trunk` with a `sip:`/`sips:`
`provider_url`, an optional E.164 `caller_number` and optional digest `auth`), polices the
`session` like a `session.start`, admits the session (budget, concurrency caps, the per-model
cap), forwards it with its own key, records the tenant as the owner of the returned `live_…` id
and holds the session's sideband to meter and enforce it, as for a Live WebRTC create. The
trunk's digest password is forwarded upstream and nowhere else: never logged, never echoed in
an error (an upstream error that quoted it is redacted) (docs/live.md#sip).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import quote, quote_plus

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.session.admission import draining_error
from gateway.webrtc.access import Caller
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.live_calls import LIVE_SESSIONS, LiveContext, _live_id, _record
from gateway.webrtc.live_config import refusal_error
from gateway.webrtc.live_sideband import LiveSideband
from gateway.webrtc.live_store import LiveRecord
from gateway.webrtc.sessions import tenant_policy
from policies.live.config import LiveRefusal, LiveRules, police_start

E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
REDACTED: Final = "[redacted]"


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, code="invalid_value", param=param)


def _only(value: Any, keys: set[str], param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"'{param}' must be an object.", param)
    for key in value:
        if key not in keys:
            raise GatewayError(400, f"Unknown parameter: '{param}.{key}'.", code="unknown_parameter", param=param)
    return value


def sip_transport(transport: Any) -> dict[str, Any]:
    """The outbound transport, checked; what is forwarded upstream (the password included)."""
    checked = _only(transport, {"type", "destination", "trunk"}, "transport")
    if not isinstance(checked.get("destination"), str) or not E164.fullmatch(checked["destination"]):
        raise _invalid("'transport.destination' must be an E.164 number (+15551234567).", "transport.destination")
    trunk = _only(checked.get("trunk"), {"provider_url", "caller_number", "auth"}, "transport.trunk")
    url = trunk.get("provider_url")
    if not isinstance(url, str) or not url.startswith(("sip:", "sips:")) or len(url) > 512:
        raise _invalid("'transport.trunk.provider_url' must be a sip: or sips: URI.", "transport.trunk.provider_url")
    caller_number = trunk.get("caller_number")
    if caller_number is not None and (not isinstance(caller_number, str) or not E164.fullmatch(caller_number)):
        raise _invalid("'transport.trunk.caller_number' must be an E.164 number.", "transport.trunk.caller_number")
    if "auth" in trunk:
        auth = _only(trunk["auth"], {"type", "username", "password"}, "transport.trunk.auth")
        if auth.get("type") != "digest" or not all(isinstance(auth.get(k), str) for k in ("username", "password")):
            raise _invalid(
                "'transport.trunk.auth' must be {'type': 'digest', 'username', 'password'}.", "transport.trunk.auth"
            )
    return checked


def _password(transport: dict[str, Any]) -> str | None:
    auth = transport["trunk"].get("auth")
    return auth["password"] if isinstance(auth, dict) and auth.get("password") else None


def _forms(password: str) -> list[str]:
    """The password as an upstream error may quote it: raw, JSON-escaped, URL-encoded; longest first."""
    escaped = json.dumps(password)[1:-1]
    forms = {password, escaped, quote(password, safe=""), quote_plus(password, safe=""), quote(password)}
    return sorted((form for form in forms if form), key=len, reverse=True)


def _redacted(error: GatewayError, password: str | None) -> GatewayError:
    """A new error whose message (and so its args and str()) carries no form of the password."""
    if not password:
        return error
    message = error.message
    for form in _forms(password):
        message = message.replace(form, REDACTED)
    headers = dict(error.headers)
    return GatewayError(
        error.status,
        message,
        code=error.code,
        param=error.param,
        type=error.type,
        retry_after=error.retry_after,
        headers=headers,
    )


async def create_outbound_sip(context: WebRtcContext, live: LiveContext, caller: Caller, body: dict[str, Any]) -> bytes:
    """Place a policed, admitted, recorded and metered outbound SIP call; upstream's JSON answer."""
    if caller.via != "api_key":
        raise GatewayError(403, "Outbound SIP calls need a tenant API key.", code="insufficient_permissions")
    unknown = set(body) - {"session", "transport"}
    if unknown:
        raise GatewayError(400, f"Unknown parameter: '{sorted(unknown)[0]}'.", code="unknown_parameter")
    transport = sip_transport(body.get("transport"))
    password = _password(transport)
    services = context.services
    policy = await tenant_policy(services, caller.tenant_id)
    policed = police_start(body.get("session"), LiveRules.from_policy(policy, services.prices), services.prices)
    if isinstance(policed, LiveRefusal):
        raise refusal_error(policed)
    model = str(policed.session["model"])
    if services.live.draining:
        raise draining_error()
    session_id = new_id("vgs")
    admitted = await services.enforcement.admit(
        caller.tenant_id, session_id, model, services.clock.time(), basis="durations"
    )
    sent = {"session": policed.session, "transport": transport}
    try:
        try:
            response = await context.upstream.send(
                "POST", LIVE_SESSIONS, caller.safety_id, accept="application/json", body=sent
            )
        except GatewayError as error:
            raise _redacted(error, password) from None
        live_id = _live_id(response.content)
        record = LiveRecord(
            live_session_id=live_id,
            tenant_id=caller.tenant_id,
            session_id=session_id,
            model=model,
            api_key_id=caller.api_key_id,
            safety_id=caller.safety_id,
            transport="sip",
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
