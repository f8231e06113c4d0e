"""The connection to the real Realtime API (or the emulator) with voxgate's own key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from gateway import __version__
from gateway.errors import GatewayError
from gateway.settings import UpstreamSettings
from gateway.upstream_tls import client_context, unreachable

USER_AGENT = f"voxgate/{__version__}"
log = logging.getLogger("voxgate.upstream")
UPSTREAM_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def realtime_url(base_url: str, query: Mapping[str, str], path: str = "/realtime") -> str:
    """`https://host/v1` + query -> `wss://host/v1/realtime?...` (as the SDK builds it; `path`
    for the other sockets: `/live/sessions/{id}/attach`, `/realtime/translations`)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + path
    return urlunsplit((scheme, parts.netloc, path, urlencode(list(query.items())), ""))


def upstream_headers(settings: UpstreamSettings, safety_id: str, beta: str | None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {settings.api_key or ''}",
        "OpenAI-Safety-Identifier": safety_id,
    }
    if settings.organization:
        headers["OpenAI-Organization"] = settings.organization
    if settings.project:
        headers["OpenAI-Project"] = settings.project
    if beta:
        headers["OpenAI-Beta"] = beta
    return headers


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


def _upstream_error_body(body: bytes | bytearray | None) -> tuple[str | None, str | None]:
    try:
        error = orjson.loads(body or b"{}").get("error") or {}
        return str(error.get("message") or "") or None, str(error.get("code") or "") or None
    except (orjson.JSONDecodeError, AttributeError):
        return None, None


def refusal_from_status(status: int, headers: Mapping[str, str], body: bytes | bytearray | None) -> GatewayError:
    """Map an upstream handshake refusal to what the client should see."""
    message, code = _upstream_error_body(body)
    retry_after = _retry_after(headers)
    if status == 429:
        return GatewayError(
            429,
            message or "The upstream Realtime API is rate limiting this organization.",
            code=code or "upstream_rate_limited",
            retry_after=retry_after if retry_after is not None else 1.0,
        )
    if status in (401, 403):
        # The key is voxgate's own, not the tenant's: a gateway misconfiguration.
        return GatewayError(502, "The gateway's upstream credentials were refused.", code="upstream_auth_failed")
    if status >= 500:
        return GatewayError(
            503,
            "The upstream Realtime API is unavailable; retry shortly.",
            code="upstream_unavailable",
            retry_after=retry_after if retry_after is not None else 1.0,
        )
    # 4xx about the request itself (unknown model, bad query): the client's to fix.
    return GatewayError(status, message or "The upstream refused the session.", code=code or "upstream_refused")


async def open_upstream(
    settings: UpstreamSettings,
    query: Mapping[str, str],
    safety_id: str,
    beta: str | None = None,
    path: str = "/realtime",
) -> ClientConnection:
    """Open the upstream WebSocket (at `path` under the base URL) or raise a GatewayError the client can be given."""
    url = realtime_url(settings.url, query, path)
    # At DEBUG the `websockets` client also logs its request headers, our key among them: the
    # root handler's filter redacts it (gateway/logs.py).
    log.debug("opening the upstream WebSocket %s", url)
    # Every upstream WebSocket verifies with the one shared context (gateway/upstream_tls.py).
    tls: dict[str, Any] = {"ssl": client_context(settings)} if url.startswith("wss:") else {}
    try:
        return await connect(
            url,
            **tls,
            additional_headers=upstream_headers(settings, safety_id, beta),
            user_agent_header=USER_AGENT,
            compression=None,
            max_size=UPSTREAM_MAX_MESSAGE_BYTES,
            open_timeout=settings.connect_timeout_seconds,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise refusal_from_status(response.status_code, dict(response.headers), response.body) from None
    except (OSError, InvalidHandshake) as exc:  # TimeoutError is an OSError: a 503 upstream_timeout
        raise unreachable(exc) from None
