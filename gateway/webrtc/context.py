"""What the WebRTC routes share in one process, built on first use and closed at shutdown.

The call records, the browser-token verifier (whose cached keys are forgotten whenever
the admin API changes a tenant's keys in this process), the one upstream HTTP client and
the per-tenant attach limiter. Handlers reach it with `context_of(app)`, typed.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Litestar

from gateway.auth.browser import BrowserTokenVerifier
from gateway.auth.browser_keys import BrowserAuthStore
from gateway.services import GatewayServices, services_of
from gateway.webrtc.attach_limits import AttachLimiter
from gateway.webrtc.calls_cache import RedisCallCache
from gateway.webrtc.calls_store import CallStore
from gateway.webrtc.upstream_http import UpstreamHttp

_STATE_KEY: Final = "webrtc"


class WebRtcContext:
    """One process's call store, browser-token verifier, upstream client and attach limiter."""

    def __init__(self, services: GatewayServices) -> None:
        self.services = services
        self.clock = services.clock
        settings = services.settings
        self.calls = CallStore(services.pool, RedisCallCache(services.redis, settings.redis.key_prefix), self.clock)
        self.upstream = UpstreamHttp(settings.upstream)
        self.attach_limiter = AttachLimiter()
        self.live: Any = None  # gateway.webrtc.live_calls.LiveContext, made on the first GPT-Live request
        self.browser_tokens = BrowserTokenVerifier(
            BrowserAuthStore(services.pool), jwks_allowed_hosts=settings.security.jwks_allowed_hosts, clock=self.clock
        )
        # A rotated or removed key is refused at once on this replica (others within the cache's life).
        services.browser_key_changes.subscribe(lambda _tenant_id: self.browser_tokens.forget())

    async def close(self) -> None:
        if self.live is not None:
            await self.live.close()  # stops the Live sidebands first: they may still hang up upstream
        await self.upstream.aclose()


def context_of(app: Litestar) -> WebRtcContext:
    """The app's WebRTC context, made on the first request that needs it."""
    services = services_of(app)
    context = getattr(app.state, _STATE_KEY, None)
    if not isinstance(context, WebRtcContext) or context.services is not services:
        context = WebRtcContext(services)
        setattr(app.state, _STATE_KEY, context)
    return context


async def close_context(app: Litestar) -> None:
    """Close the upstream client at shutdown, if a request ever made the context."""
    context = getattr(app.state, _STATE_KEY, None)
    if isinstance(context, WebRtcContext):
        await context.close()
