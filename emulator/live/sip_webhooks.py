"""Ringing an inbound SIP call: a pending Live session announced by a signed OpenAI webhook.

The emulator has no SIP trunk. A test rings a call with `POST /_emulator/live/sip/ring`
(test-only; `{"url", "secret", "to", "from"?, "call_id"?, "event_type"?}`): the emulator makes
a pending `sip` session (accept, reject, refer and hangup work on it, `emulator.live.controls`)
and POSTs `live.transport.incoming` (or the deprecated `live.call.incoming`) to `url`, signed
the Standard Webhooks way with `secret` (`whsec_…`), as OpenAI's webhooks are. The answer
holds the session id and the exact delivery (headers and body) so a test can replay it. The
event's shape is `openai.types.webhooks.LiveTransportIncomingWebhookEvent` (3.57); the
conformance tests validate what this sends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from litestar import Request, Response, post

from emulator.asgi import parse_json_object
from emulator.errors import new_id
from emulator.http_replies import http_error, json_response

if TYPE_CHECKING:
    from emulator.live.endpoints import LiveEndpoints

RING_PATH = "/_emulator/live/sip/ring"
EVENT_TYPES = ("live.transport.incoming", "live.call.incoming")


def webhook_signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the key a `whsec_…` secret encodes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def incoming_event(event_type: str, session_id: str, sip_headers: list[dict[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {"session_id": session_id, "sip_headers": sip_headers}
    if event_type == "live.transport.incoming":
        data = {"type": "sip", **data, "sip_media_security": "srtp"}
    return {"object": "event", "id": new_id("evt"), "type": event_type, "created_at": int(time.time()), "data": data}


@dataclass(frozen=True)
class SentWebhook:
    url: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it could not be reached)


async def send_webhook(url: str, secret: str, event: dict[str, Any]) -> SentWebhook:
    body = orjson.dumps(event)
    webhook_id = new_id("wh")
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": webhook_signature(secret, webhook_id, stamp, body),
    }
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            status = (await client.post(url, content=body, headers=headers)).status_code
    except httpx.HTTPError:
        status = 0
    return SentWebhook(url, headers, body, status)


def ring_handler(live: LiveEndpoints) -> Any:
    """The test-only ring endpoint, bound to `live` (every webhook sent is kept in `live.webhooks`)."""

    @post(RING_PATH, status_code=200)
    async def ring_sip(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = parse_json_object(await request.body())
        if body is None or not all(isinstance(body.get(k), str) for k in ("url", "secret", "to")):
            return http_error(400, "'url', 'secret' and 'to' are required strings.", code="invalid_request_error")
        event_type = body.get("event_type", EVENT_TYPES[0])
        if event_type not in EVENT_TYPES:
            return http_error(400, f"'event_type' must be one of {EVENT_TYPES}.", code="invalid_request_error")
        host = "sip.example.com"
        headers = [
            {"name": "From", "value": f"sip:{body.get('from', '+14155550123')}@{host}"},
            {"name": "To", "value": f"sip:{body['to']}@{host}"},
            {"name": "Call-ID", "value": str(body.get("call_id") or new_id("call") + "@" + host)},
        ]
        session_id = live.ring()
        sent = await send_webhook(body["url"], body["secret"], incoming_event(event_type, session_id, headers))
        live.webhooks.append(sent)
        answer = {"session_id": session_id, "status": sent.status, "headers": sent.headers, "body": sent.body.decode()}
        return json_response(200, answer)

    return ring_sip
