"""Who is calling the WebRTC routes, and which calls they may see.

A tenant API key works on every route; a browser JWT (`gateway.auth.browser`) only where
a route allows it (placing a raw offer, reading and hanging up the caller's own calls).
The caller's safety identifier is what upstream sees: a browser token's `sub`, the
`X-Voxgate-End-User` header a backend sends, or else the key's own (docs/webrtc.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.auth.apikeys import looks_like_api_key
from gateway.auth.browser import BrowserPrincipal, BrowserTokenVerifier, browser_tokens_unsupported
from gateway.auth.credentials import end_user_from_header, key_safety_identifier, safety_identifier
from gateway.errors import GatewayError, invalid_api_key, missing_api_key
from gateway.storage.tenants import TenantDirectory
from gateway.webrtc.calls_store import Call, CallStore
from gateway.webrtc.upstream_http import is_call_id


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    api_key_id: str | None  # None for a browser token
    via: Literal["api_key", "browser_token"]
    safety_id: str
    browser: BrowserPrincipal | None = None
    tags: tuple[tuple[str, str], ...] = ()  # X-Voxgate-Tags of a session-creating request


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request presented: its bearer token and its raw `X-Voxgate-End-User` value."""

    authorization: str | None
    end_user: bytes = b""


def call_not_found(call_id: str) -> GatewayError:
    # The same answer for an unknown call and for another tenant's call.
    return GatewayError(404, f"No call found with id '{call_id}'.", code="call_not_found", param="call_id")


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise missing_api_key()
    return token


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


async def authenticate(
    presented: Presented,
    tenants: TenantDirectory,
    browser_tokens: BrowserTokenVerifier,
    secret: bytes,
    *,
    allow_browser: bool,
) -> Caller:
    """A tenant API key (any route) or a browser JWT (where `allow_browser`); else a 401/403.

    `secret` keys the safety identifiers (`VOXGATE_SAFETY_IDENTIFIER_SECRET`).
    """
    token = _bearer(presented.authorization)
    if _looks_like_jwt(token) and not looks_like_api_key(token):
        if not allow_browser:
            raise browser_tokens_unsupported()
        principal = await browser_tokens.verify(token)
        safety_id = safety_identifier(secret, principal.tenant_id, principal.subject)
        return Caller(principal.tenant_id, None, "browser_token", safety_id, principal)
    identity = await tenants.authenticate(token)
    if identity is None:
        raise invalid_api_key()
    end_user = end_user_from_header(presented.end_user)  # UTF-8, as on the WebSocket path
    safety_id = (
        safety_identifier(secret, identity.tenant_id, end_user)
        if end_user
        else key_safety_identifier(secret, identity.tenant_id, identity.key_id)
    )
    return Caller(identity.tenant_id, identity.key_id, "api_key", safety_id)


def may_see(caller: Caller, call: Call) -> bool:
    """A tenant key sees all of its tenant's calls; a browser token only its own user's calls."""
    if call.tenant_id != caller.tenant_id:
        return False
    return caller.via == "api_key" or (bool(call.safety_id) and call.safety_id == caller.safety_id)


async def visible_call(calls: CallStore, caller: Caller, call_id: str) -> Call:
    """The call if `caller` may see it; else the 404 an unknown call gets."""
    call = await calls.get(call_id) if is_call_id(call_id) else None
    if call is None or not may_see(caller, call):
        raise call_not_found(call_id)
    return call
