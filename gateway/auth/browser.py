"""Browser tokens: short-lived JWTs a tenant's own backend signs for its end users.

A browser cannot hold a tenant API key, so the tenant's backend signs a JWT for the
signed-in user and the browser presents it as ``Authorization: Bearer <jwt>`` on the
WebRTC routes (``POST /v1/realtime/calls`` with a raw SDP offer, and hangup). Rules:

* The token names its tenant in a ``tenant_id`` claim (voxgate's ``ten_…`` id). The claim
  is read unverified only to pick that tenant's keys; the signature then covers it.
* Keys are registered per tenant (``voxgate tenant jwt``; `gateway.auth.browser_keys` stores
  them): an HS256 secret (at least 32 bytes) and/or a JWKS URL serving RS256 / ES256 keys. Each
  key type verifies exactly one algorithm family (`gateway.auth.jwt.KeySet`, shared with
  the admin API), so ``alg: none`` and key-confusion tokens find no key.
* ``aud`` must equal the tenant's audience (default ``voxgate``); ``exp`` is required and
  at most 15 minutes ahead (plus the 30 s clock-skew leeway); ``sub`` (the end user) is
  required and becomes the upstream safety identifier.
* Every failure is a 401 ``invalid_token`` whose message never echoes the token and never
  says whether the tenant exists.

Keys, their storage and the rotation window of a replaced HS256 secret: `gateway.auth.browser_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import jwt

from gateway.auth.browser_keys import MAX_LIFETIME_SECONDS, BrowserAuthConfig, BrowserAuthStore, StoredBrowserKeys
from gateway.auth.jwt import LEEWAY_SECONDS, KeySet, invalid_token
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError

CONFIG_CACHE_SECONDS: Final = 10.0  # a rotated key is in force on every replica within this
TENANT_CLAIM: Final = "tenant_id"
# Every failure before a signature verified, an unknown or disabled tenant included: one answer.
NO_KEY_MESSAGE: Final = "No trusted key matches the token."


@dataclass(frozen=True, slots=True)
class BrowserPrincipal:
    """A verified browser token: whose tenant, which end user, until when."""

    tenant_id: str
    subject: str
    expires_at: float


def _unverified_tenant(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise invalid_token("The token is malformed.") from None
    tenant_id = claims.get(TENANT_CLAIM) if isinstance(claims, dict) else None
    if not isinstance(tenant_id, str) or not tenant_id:
        raise invalid_token(f"The token lacks the required {TENANT_CLAIM!r} claim.")
    if not tenant_id.isascii() or "\x00" in tenant_id:
        raise invalid_token(NO_KEY_MESSAGE)  # no tenant has such an id, and Postgres text cannot hold NUL
    return tenant_id


class BrowserTokenVerifier:
    """Verifies browser JWTs against the keys of the tenant they name (cached briefly)."""

    def __init__(
        self,
        store: BrowserAuthStore,
        cache_seconds: float = CONFIG_CACHE_SECONDS,
        jwks_allowed_hosts: frozenset[str] = frozenset(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._jwks_allowed_hosts = jwks_allowed_hosts
        self._clock = clock
        self._configs: dict[str, tuple[float, StoredBrowserKeys | None]] = {}
        self._keysets: dict[tuple[str | None, str | None], KeySet] = {}

    def forget(self) -> None:
        """Drop every cached config and key set (JWKS keys included): the next token reads them afresh."""
        self._configs.clear()
        self._keysets.clear()

    async def verify(self, token: str, now: float | None = None) -> BrowserPrincipal:
        now = self._clock.time() if now is None else now
        tenant_id = _unverified_tenant(token)
        fetched_at, stored = await self._config(tenant_id, now)
        if stored is None:
            # Same answer whether the tenant is unknown, disabled or has no browser keys, and the
            # same as a known tenant's for a token none of its keys signed (`no_key_message`).
            raise invalid_token(NO_KEY_MESSAGE)
        config = stored.config
        previous = None
        # The window ends on this clock as it did on the database's: a cached config never stretches it.
        if stored.previous_secret is not None and now < fetched_at + stored.previous_seconds_left:
            previous = stored.previous_secret.encode()
        claims = await self._keyset(config).decode(
            token,
            audience=config.audience,
            issuer=None,
            required=["exp", "aud", "sub", TENANT_CLAIM],
            previous_secret=previous,
            no_key_message=NO_KEY_MESSAGE,
        )
        return _principal(claims, tenant_id, now)

    async def _config(self, tenant_id: str, now: float) -> tuple[float, StoredBrowserKeys | None]:
        cached = self._configs.get(tenant_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached
        stored = await self._store.keys(tenant_id)
        if len(self._configs) > 10_000:
            self._configs.clear()
        self._configs[tenant_id] = (now, stored)
        return now, stored

    def _keyset(self, config: BrowserAuthConfig) -> KeySet:
        ident = (config.hs256_secret, config.jwks_url)
        keys = self._keysets.get(ident)
        if keys is None:
            if len(self._keysets) > 10_000:
                self._keysets.clear()
            secret = config.hs256_secret.encode() if config.hs256_secret is not None else None
            keys = self._keysets[ident] = KeySet(
                secret=secret, jwks_url=config.jwks_url, jwks_allowed_hosts=self._jwks_allowed_hosts
            )
        return keys


def _principal(claims: dict[str, Any], tenant_id: str, now: float) -> BrowserPrincipal:
    if claims.get(TENANT_CLAIM) != tenant_id:  # cannot differ once verified, but be explicit
        raise invalid_token("The token is invalid.")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise invalid_token("The token's 'sub' claim must be a non-empty string.")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise invalid_token("The token's 'exp' claim must be a number.")
    if exp > now + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise invalid_token(
            f"The token lives too long: 'exp' may be at most {MAX_LIFETIME_SECONDS // 60} minutes ahead."
        )
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and exp - iat > MAX_LIFETIME_SECONDS:
        raise invalid_token(f"The token lives too long: at most {MAX_LIFETIME_SECONDS // 60} minutes from 'iat'.")
    return BrowserPrincipal(tenant_id=tenant_id, subject=subject, expires_at=float(exp))


def browser_tokens_unsupported() -> GatewayError:
    """A browser token where only a tenant API key may act (minting secrets, attaching calls)."""
    return GatewayError(
        403, "This endpoint needs a tenant API key; browser tokens cannot use it.", code="browser_token_not_allowed"
    )
