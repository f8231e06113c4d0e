"""A tenant's own sideband (`/v1/live/sessions/{id}/attach`), relayed with its client events policed.

Ownership is checked before upstream is reached (`live_controls.serve_attach`). From then on
upstream's events go to the tenant as they are, and each client event goes through
`policies.live.sideband.police_sideband` under the tenant's policy in force: a `session.update`
is clamped or refused exactly as on the Live WebSocket (a clamp writes the `live_clamp` audit
row on the session), a refusal is a GA-shaped `error` to the tenant and nothing goes upstream.
voxgate keeps metering the session on its own sideband.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from gateway.ids import new_id
from gateway.services import GatewayServices
from gateway.websocket_relay import Message, close_client, relay, to_client
from policies.actions import AuditEvent
from policies.live.config import LiveRefusal, LiveRules
from policies.live.governor import live_error
from policies.live.sideband import SidebandRewrite, police_sideband

log = logging.getLogger("voxgate.live")


async def relay_policed(
    services: GatewayServices, tenant_id: str, session_id: str, receive: Any, send: Any, upstream: ClientConnection
) -> None:
    """Relay until either side ends, policing the tenant's events; then close the other side."""
    reply = to_client(send)

    async def from_client(message: Message) -> None:
        event = _decode(message)
        rules = LiveRules()
        if isinstance(event, dict) and event.get("type") == "session.update":
            try:
                policy, _ = await services.enforcement.policy_for(tenant_id)
            except Exception as exc:  # no policy, no update: never forwarded unpoliced
                log.warning("sideband update of %s not sent: the policy could not be read (%s)", session_id, exc)
                unavailable = LiveRefusal(
                    "policy_unavailable",
                    "voxgate could not read this tenant's policy; the update was not sent. Retry shortly.",
                    "",
                    type="server_error",
                )
                await reply(_error(unavailable, event))
                return
            rules = LiveRules.from_policy(policy, services.prices)
        verdict = police_sideband(event, rules)
        if verdict is None:
            await upstream.send(message)
        elif isinstance(verdict, SidebandRewrite):
            detail = {"paths": list(verdict.clamped), "via": "attach"}
            services.ledger.submit(AuditEvent("live_clamp", session_id, tenant_id, services.clock.time(), detail))
            await upstream.send(orjson.dumps(verdict.event).decode())
        else:
            await reply(_error(verdict, event))

    if await relay(receive, send, upstream, from_client) == "upstream":
        await close_client(send, upstream.close_code or 1000, upstream.close_reason or "")
    else:
        with contextlib.suppress(Exception):
            await upstream.close()


def _decode(message: Message) -> object:
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError:
        return None


def _error(refusal: LiveRefusal, event: object) -> str:
    client_id = event.get("event_id") if isinstance(event, dict) else None
    return orjson.dumps(
        live_error(
            refusal.code,
            refusal.message,
            refusal.param or None,
            new_id("vgev"),
            type=refusal.type,
            client_event_id=client_id if isinstance(client_id, str) else None,
        )
    ).decode()
