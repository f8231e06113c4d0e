"""`POST /v1/openai/webhooks`: OpenAI's webhooks, verified, deduplicated and routed to a tenant.

Point the OpenAI project's webhook at `https://<voxgate>/v1/openai/webhooks` and set its signing
secret as `VOXGATE_OPENAI_WEBHOOK_SECRET` (unset: this path answers 404). Each delivery is checked
with Standard Webhooks (gateway/alerts/signing.py): a `webhook-signature` over
`{webhook-id}.{webhook-timestamp}.{body}` (constant-time compare) and a timestamp within
`TOLERANCE_S` of now; anything else is a 401 and nothing is recorded. A verified `webhook-id`
is recorded durably, so a replay is acknowledged (2xx, so OpenAI stops retrying) and never
processed twice.

`live.transport.incoming` (and the deprecated `live.call.incoming`): the user part of the SIP
`To` header is looked up in the operator's routing (gateway/sip/config.py). Only that exact,
operator-configured value is matched; every other `sip_headers` entry is untrusted caller
metadata and is passed on, never interpreted. A routed call is recorded as the tenant's pending
session and its event queued for the tenant's webhook (gateway/sip/delivery.py); the same
session or SIP `Call-ID` arriving again (both event types during the migration) is routed
once. An unrouted call is left alone: acknowledged and logged, never rejected
upstream, because another system on the same project may answer it.

`realtime.call.incoming` is acknowledged and ignored: voxgate serves inbound SIP on the Live
surface only, never forwards that event to a tenant and never accepts a Realtime call it did
not create, so a call is accepted on one surface at most (docs/live.md#sip).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson
from litestar import Request, Response, post

from gateway.alerts.signing import WebhookSecretError, verify
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.query_params import PARSES_OWN_QUERY
from gateway.services import services_of
from gateway.session.admission import refusing_outages
from gateway.sip.config import SipConfig
from gateway.webrtc.live_sip import SipCalls
from gateway.webrtc.live_store import LiveRecord

log = logging.getLogger("voxgate.sip")

PATH: Final = "/v1/openai/webhooks"
TOLERANCE_S: Final = 300  # Standard Webhooks' default: a delivery older or newer than this is refused
MAX_BODY: Final = 256 * 1024
LIVE_INCOMING: Final = frozenset({"live.transport.incoming", "live.call.incoming"})
PENDING_MODEL: Final = ""  # a ringing session has no model until the tenant accepts it


def _refused(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_signature")


def _plain_stamp(stamp: str) -> bool:
    return stamp.isascii() and stamp.isdecimal() and len(stamp) <= 12


def verified(secret: str, headers: dict[str, str], body: bytes, now: float) -> str:
    """The delivery's `webhook-id` if its signature and timestamp hold; else a 401 (nothing recorded)."""
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    # ASCII decimal digits only, and few of them: `isdigit()` takes '²' and int() of a huge string raises.
    if not webhook_id or len(webhook_id) > 200 or not _plain_stamp(stamp) or not signature:
        raise _refused("The webhook's webhook-id, webhook-timestamp or webhook-signature header is missing.")
    if abs(now - int(stamp)) > TOLERANCE_S:
        raise _refused("The webhook's timestamp is outside the tolerance.")
    try:
        ok = verify(secret, webhook_id, int(stamp), body, signature)
    except WebhookSecretError:  # checked at startup; never the secret in the message
        ok = False
    if not ok:
        raise _refused("The webhook's signature does not match.")
    return webhook_id


def user_part(uri: str) -> str | None:
    """The user part of a SIP/tel URI in a header value: `"A" <sip:+1800@host>;tag=x` -> `+1800`."""
    value = uri.strip()
    if "<" in value and ">" in value.split("<", 1)[1]:
        value = value.split("<", 1)[1].split(">", 1)[0]
    value = value.split(";", 1)[0].strip()
    scheme, _, rest = value.partition(":")
    if scheme.lower() not in ("sip", "sips", "tel") or not rest:
        return None
    user = rest.split("@", 1)[0] if scheme.lower() != "tel" else rest
    return user or None


def without_nul(value: Any) -> Any:
    """`value` (parsed JSON) with every NUL (U+0000) in its strings and keys replaced by U+FFFD.

    Postgres text and jsonb cannot hold a NUL, and OpenAI delivers an event again until it gets a
    2xx: a caller's SIP header with a NUL in it must not keep its call from ever being routed."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


def _sip_headers(data: dict[str, Any]) -> dict[str, str]:
    """The first value of each SIP header, by lower-case name (untrusted caller metadata)."""
    out: dict[str, str] = {}
    for header in data.get("sip_headers") or []:
        if isinstance(header, dict) and isinstance(header.get("name"), str) and isinstance(header.get("value"), str):
            out.setdefault(header["name"].lower(), header["value"])
    return out


async def route_incoming(request: Request[Any, Any, Any], webhook_id: str, event: dict[str, Any]) -> str:
    """Route one verified `live.*.incoming` event; what happened to it."""
    services = services_of(request)
    calls = SipCalls(services.pool)
    kind = str(event["type"])
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    session_id = data.get("session_id")
    if data.get("type", "sip") != "sip" or not isinstance(session_id, str) or not 0 < len(session_id) <= 200:
        return "ignored" if await calls.seen(webhook_id, kind) else "replay"
    sip = _sip_headers(data)
    called = user_part(sip.get("to", ""))
    tenant_id = await SipConfig(services.pool).tenant_for(called) if called else None
    if tenant_id is None:
        if not await calls.seen(webhook_id, kind):
            return "replay"
        log.info("inbound SIP session %s: no tenant is routed for its called number; left alone", session_id)
        return "unrouted"
    live = LiveRecord(live_session_id=session_id, tenant_id=tenant_id, session_id=new_id("vgs"), model=PENDING_MODEL)
    call = {"sip_call_id": sip.get("call-id") or None, "called": called, "event": event}
    outcome = await calls.record_inbound(webhook_id, kind, live, new_id("vgwh"), call, services.clock.time())
    if outcome == "recorded":
        log.info("inbound SIP session %s routed to tenant %s", session_id, tenant_id)
    return outcome


@post(
    PATH,
    operation_id="openai_webhooks",
    tags=["sip"],
    status_code=200,
    include_in_schema=False,
    opt={PARSES_OWN_QUERY: True},  # a webhook URL may carry a query of the operator's: ignored
)
async def openai_webhooks(request: Request[Any, Any, Any]) -> Response[bytes]:
    """OpenAI's webhooks (Standard Webhooks signatures): inbound GPT-Live SIP calls, routed to tenants."""
    services = services_of(request)
    secret = services.settings.upstream.webhook_secret
    if secret is None:
        raise GatewayError(404, "OpenAI webhooks are not configured on this gateway.", code="not_found")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise GatewayError(413, "The webhook body is too large.", code="payload_too_large")
    headers = {name.lower(): value for name, value in request.headers.items()}
    webhook_id = verified(secret, headers, body, services.clock.time())
    try:
        event = without_nul(orjson.loads(body))
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise GatewayError(400, "The webhook body must be an event object.", code="invalid_request_error")
    with refusing_outages():  # Postgres away: a 503, and OpenAI delivers it again later
        if event["type"] in LIVE_INCOMING:
            status = await route_incoming(request, webhook_id, event)
        else:
            status = "ignored" if await SipCalls(services.pool).seen(webhook_id, event["type"]) else "replay"
    return Response(orjson.dumps({"status": status}), media_type="application/json")
