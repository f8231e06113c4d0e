"""Realtime translation's routes (docs/translation.md).

* ``GET /v1/realtime/translations?model=gpt-realtime-translate`` (WebSocket): the session,
  admitted, relayed and metered by appended audio (`socket.py`).
* ``POST /v1/realtime/translations/client_secrets``: mint an ephemeral key for a browser,
  tenant key only, the model checked against the policy and the price table and
  `expires_after` capped at the policy's longest lifetime. Like a Realtime client secret,
  what the browser then does with it at OpenAI is not metered by voxgate.
* ``POST /v1/realtime/translations/calls`` and ``…/{call_id}/hangup``: WebRTC calls brokered
  by voxgate and metered by wall-clock time (`call_routes.py`).
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import orjson
from litestar import Request, Response, WebSocket, post, websocket
from litestar.config.app import AppConfig

from gateway.auth.credentials import key_safety_identifier
from gateway.errors import GatewayError, invalid_api_key, missing_api_key
from gateway.services import services_of
from gateway.session.admission import refusing_outages
from gateway.translation.call_routes import CALL_ROUTES, start_sweeper, stop_sweeper
from gateway.translation.socket import serve_translation
from gateway.upstream import USER_AGENT, refusal_from_status, upstream_headers
from gateway.upstream_tls import http_client, unreachable
from policies.session_config import SessionRefused, police_expires_after

TAGS: Final = ["realtime", "translation"]
MAX_BODY_BYTES: Final = 64 * 1024
UPSTREAM_TIMEOUT_S: Final = 30.0


@websocket("/v1/realtime/translations", operation_id="realtime_translations_websocket", tags=TAGS)
async def translation_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """`client.realtime.translations.connect(model=…)` through voxgate, metered by appended audio."""
    await serve_translation(services_of(socket), dict(socket.scope), socket.receive, socket.send)


@post(
    "/v1/realtime/translations/client_secrets",
    operation_id="realtime_translations_client_secrets_create",
    tags=TAGS,
    status_code=200,
)
async def create_translation_secret(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Mint a translation client secret under the tenant's policy (tenant API key only)."""
    services = services_of(request)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise missing_api_key()
    with refusing_outages():
        identity = await services.tenants.authenticate(token.strip())
    if identity is None:
        raise invalid_api_key()
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise GatewayError(413, "The request body is too large.", code="request_too_large")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise GatewayError(400, "The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("session", {}), dict):
        raise GatewayError(400, "'session' must be an object.", code="invalid_value", param="session")
    session = body.get("session", {})
    model = session.get("model", "gpt-realtime-translate")
    policy, _ = await services.enforcement.policy_for(identity.tenant_id)
    if not isinstance(model, str) or not policy.allows_model(model):
        raise GatewayError(
            403, f"Model '{model}' is not allowed by policy.", code="model_not_allowed", param="session.model"
        )
    if not services.prices.admits(model, "durations"):
        raise GatewayError(403, f"Model '{model}' has no price.", code="model_not_priced", param="session.model")
    expires = police_expires_after(body.get("expires_after"), policy)
    if isinstance(expires, SessionRefused):
        raise GatewayError(400, expires.detail.message, code=expires.detail.code, param=expires.detail.param)
    sent = {**body, "session": {**session, "model": model}} | ({"expires_after": expires} if expires else {})
    safety_id = key_safety_identifier(
        services.settings.security.safety_identifier_secret, identity.tenant_id, identity.key_id
    )
    settings = services.settings.upstream
    headers = {
        **upstream_headers(settings, safety_id, None),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        async with http_client(
            settings, timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=settings.connect_timeout_seconds)
        ) as http:
            answer = await http.post(
                f"{settings.url.rstrip('/')}/realtime/translations/client_secrets",
                headers=headers,
                content=orjson.dumps(sent),
            )
    except httpx.TimeoutException:
        raise GatewayError(
            503, "Timed out waiting for the upstream.", code="upstream_timeout", retry_after=1.0
        ) from None
    except httpx.HTTPError as exc:
        raise unreachable(exc, "the upstream") from None
    if answer.status_code >= 300:
        raise refusal_from_status(answer.status_code, dict(answer.headers), answer.content)
    return Response(answer.content, status_code=200, media_type="application/json")


ROUTES: Final = [translation_socket, create_translation_secret]


def register(app_config: AppConfig) -> None:
    """Add the translation routes (called by `VoxgatePlugin`)."""
    app_config.route_handlers.extend([*ROUTES, *CALL_ROUTES])
    app_config.on_startup.append(start_sweeper)  # every replica sweeps calls past their cap
    app_config.on_shutdown.append(stop_sweeper)
