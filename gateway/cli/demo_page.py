"""The browser demo of `voxgate demo`: a page that places a WebRTC call through voxgate.

`GET /demo/` serves a static page (HTML + vanilla JS, packaged in `gateway/static/demo/`).
It asks `POST /demo/token` for a browser JWT, posts its SDP offer to the SDP broker
(`POST /v1/realtime/calls`, raw `application/sdp`) and plays the answer's audio. Below the
call it shows the `openai` SDK snippets for Realtime and GPT-Live, with this gateway's
origin as `base_url` (the page never holds an API key, so the snippets carry a placeholder).

The token endpoint signs a short-lived HS256 browser token for the demo tenant with a secret
made fresh for each `voxgate demo` run. It plays the part of a tenant's own backend, which
is why only `voxgate demo` mounts this plugin; `voxgate serve` never does (docs/webrtc.md).
The page never sees the tenant API key or the upstream key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Final

import asyncpg
import jwt
from litestar import Response, get, post
from litestar.config.app import AppConfig
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins import InitPluginProtocol

from gateway.auth.browser import TENANT_CLAIM
from gateway.auth.browser_keys import DEFAULT_AUDIENCE, MAX_LIFETIME_SECONDS, BrowserAuthConfig, BrowserAuthStore
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.query_params import PARSES_OWN_QUERY

PAGE_PATH: Final = "/demo/"
TOKEN_SECONDS: Final = 5 * 60
DEMO_SUBJECT: Final = "demo-browser"  # the end user; becomes the upstream safety identifier
TAGS: Final = ["demo"]
_ASSETS: Final = {
    "index.html": "text/html",  # Litestar adds "; charset=utf-8" to text/ types
    "demo.js": "text/javascript",
    "demo.css": "text/css",
}
# Same-origin everything; the call's audio arrives as a MediaStream, which CSP does not govern.
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

assert TOKEN_SECONDS <= MAX_LIFETIME_SECONDS


@dataclass(frozen=True, slots=True)
class DemoBrowserSigner:
    """Signs the demo tenant's browser tokens, as a tenant's backend would for its signed-in user."""

    tenant_id: str
    secret: str = field(repr=False)
    audience: str = DEFAULT_AUDIENCE
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False, compare=False)

    def mint(self, now: float | None = None) -> tuple[str, int]:
        """A token for `DEMO_SUBJECT` and its `exp` (issued at `now`, else the signer's clock)."""
        issued = int(self.clock.time() if now is None else now)
        expires = issued + TOKEN_SECONDS
        claims = {
            TENANT_CLAIM: self.tenant_id,
            "sub": DEMO_SUBJECT,
            "aud": self.audience,
            "iat": issued,
            "exp": expires,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256"), expires


async def enable_demo_browser_tokens(
    pool: asyncpg.Pool, tenant_id: str, clock: Clock = SYSTEM_CLOCK
) -> DemoBrowserSigner:
    """Register a fresh HS256 browser-token secret for `tenant_id` (replacing any) and return its signer."""
    signer = DemoBrowserSigner(tenant_id, secrets.token_urlsafe(48), clock=clock)
    await BrowserAuthStore(pool).set(BrowserAuthConfig(tenant_id, hs256_secret=signer.secret))
    return signer


def _asset(name: str) -> bytes:
    return (files("gateway") / "static" / "demo" / name).read_bytes()


class DemoPagePlugin(InitPluginProtocol):
    """Mounts the demo page and its token endpoint. Only `voxgate demo` (and its tests) use it."""

    def __init__(self, signer: DemoBrowserSigner) -> None:
        self.signer = signer

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        signer = self.signer

        @get(
            [PAGE_PATH, "/demo/{name:str}"],
            operation_id="demo_page",
            tags=TAGS,
            include_in_schema=False,
            sync_to_thread=False,
            opt={PARSES_OWN_QUERY: True},  # cache busters on the page and its assets: ignored
        )
        def demo_page(name: FromPath[str] = "index.html") -> Response[bytes]:
            """The page (at `/demo/` and `/demo`) and its two assets; nothing else under /demo/ is a file."""
            media_type = _ASSETS.get(name)
            if media_type is None:
                raise NotFoundException()
            return Response(_asset(name), media_type=media_type, headers=_HEADERS)

        @post("/demo/token", operation_id="demo_token", tags=TAGS, include_in_schema=False, sync_to_thread=False)
        def demo_token() -> Response[dict[str, Any]]:
            """A browser JWT for the demo tenant, valid for `TOKEN_SECONDS`."""
            token, expires = signer.mint()
            body = {"token": token, "expires_at": expires, "tenant_id": signer.tenant_id, "sub": DEMO_SUBJECT}
            return Response(body, status_code=200, headers={"Cache-Control": "no-store"})

        app_config.route_handlers.extend([demo_page, demo_token])
        return app_config
