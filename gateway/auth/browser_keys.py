"""Browser-token keys: what a tenant registers to verify its browser JWTs, and how it is stored.

Keys are registered per tenant (``voxgate tenant jwt`` or the admin API; table
``tenant_browser_auth``): an HS256 secret (at least 32 bytes) and/or a JWKS URL serving RS256 /
ES256 keys, and the audience the tokens carry. `gateway.auth.browser` verifies tokens with them.

The HS256 secret is a verification key, so it is stored as given, never returned. Use
JWKS in production: then voxgate stores only a URL and holds nothing that can sign.

Rotation has an overlap window: when the HS256 secret is replaced (by another secret, or
by JWKS only), the replaced secret stays valid for ``previous_valid_seconds`` (default 900,
the longest a browser token lives; 0 is a hard cut-over), measured by the database clock.
Only one previous secret is kept. `previous_secret_after` decides it; `store_config` writes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from gateway.auth.jwks import JwksUrlRefused, check_jwks_url, resolve_jwks_host
from gateway.auth.jwt import MIN_SECRET_BYTES
from gateway.ids import new_id

DEFAULT_AUDIENCE: Final = "voxgate"
MAX_LIFETIME_SECONDS: Final = 15 * 60
DEFAULT_PREVIOUS_VALID_SECONDS: Final = MAX_LIFETIME_SECONDS  # every token the old secret signed has expired
MAX_PREVIOUS_VALID_SECONDS: Final = 3600
SET_TIME_RESOLVE_SECONDS: Final = 3.0

# The previous secret only while its window is open, and the seconds left of it, both by
# the database clock (each replica turns them into a deadline on its own clock).
GET_CONFIG: Final = """
SELECT b.tenant_id, b.hs256_secret, b.jwks_url, b.audience,
       CASE WHEN b.hs256_previous_until > now() THEN b.hs256_previous_secret END AS previous_secret,
       greatest(extract(epoch FROM b.hs256_previous_until - now()), 0)::float8 AS previous_seconds_left
FROM tenant_browser_auth b JOIN tenants t ON t.id = b.tenant_id
WHERE b.tenant_id = $1 AND t.disabled_at IS NULL
"""

# Locks the tenant so concurrent changes of its keys apply one after the other; no row
# when the tenant does not exist (the upsert then fails on the foreign key).
LOCK_FOR_CHANGE: Final = """
SELECT now() AS now, b.hs256_secret, b.hs256_key_id, b.hs256_previous_secret, b.hs256_previous_key_id,
       b.hs256_previous_until
FROM tenants t LEFT JOIN tenant_browser_auth b ON b.tenant_id = t.id
WHERE t.id = $1
FOR NO KEY UPDATE OF t
"""

UPSERT_CONFIG: Final = """
INSERT INTO tenant_browser_auth (tenant_id, hs256_secret, jwks_url, audience, hs256_previous_secret,
                                 hs256_previous_until, hs256_key_id, hs256_previous_key_id, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
ON CONFLICT (tenant_id) DO UPDATE
SET hs256_secret = EXCLUDED.hs256_secret, jwks_url = EXCLUDED.jwks_url, audience = EXCLUDED.audience,
    hs256_previous_secret = EXCLUDED.hs256_previous_secret, hs256_previous_until = EXCLUDED.hs256_previous_until,
    hs256_key_id = EXCLUDED.hs256_key_id, hs256_previous_key_id = EXCLUDED.hs256_previous_key_id,
    updated_at = now()
"""

# What the admin API and CLI show: key ids and URLs, never a secret.
GET_BROWSER_AUTH: Final = """
SELECT hs256_key_id, jwks_url, audience, created_at, updated_at,
       CASE WHEN hs256_previous_until > now() THEN hs256_previous_key_id END AS previous_key_id,
       CASE WHEN hs256_previous_until > now() THEN hs256_previous_until END AS previous_valid_until
FROM tenant_browser_auth WHERE tenant_id = $1
"""

DELETE_CONFIG: Final = "DELETE FROM tenant_browser_auth WHERE tenant_id = $1 RETURNING tenant_id"


class BrowserAuthConfigError(ValueError):
    """A browser-token configuration that cannot be stored (short secret, bad URL)."""


@dataclass(frozen=True, slots=True)
class BrowserAuthConfig:
    tenant_id: str
    hs256_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    audience: str = DEFAULT_AUDIENCE

    def validate(self, jwks_allowed_hosts: frozenset[str] = frozenset()) -> None:
        """Refuse what cannot be stored, without network: a short secret, an empty audience, a
        JWKS URL that is not https or names a loopback/private/link-local/... address
        (`gateway.auth.jwks.check_jwks_url`; hosts in `jwks_allowed_hosts` are exempt)."""
        if self.hs256_secret is None and self.jwks_url is None:
            raise BrowserAuthConfigError("give an HS256 secret or a JWKS URL")
        if self.hs256_secret is not None and len(self.hs256_secret.encode()) < MIN_SECRET_BYTES:
            raise BrowserAuthConfigError(f"the HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.jwks_url is not None:
            try:
                check_jwks_url(self.jwks_url, jwks_allowed_hosts)
            except JwksUrlRefused as exc:
                raise BrowserAuthConfigError(str(exc)) from None
        if not self.audience:
            raise BrowserAuthConfigError("the audience must not be empty")

    async def check_resolved(self, jwks_allowed_hosts: frozenset[str] = frozenset()) -> None:
        """Resolve the JWKS host now and refuse it if any address is not public. A name that
        does not resolve (yet) passes: every fetch resolves and checks again."""
        if self.jwks_url is None:
            return
        parts = check_jwks_url(self.jwks_url, jwks_allowed_hosts)
        try:
            async with asyncio.timeout(SET_TIME_RESOLVE_SECONDS):
                await asyncio.to_thread(resolve_jwks_host, parts, jwks_allowed_hosts)
        except JwksUrlRefused as exc:
            raise BrowserAuthConfigError(str(exc)) from None
        except (OSError, TimeoutError):
            return


def validate_previous_valid_seconds(seconds: int | None) -> None:
    """The overlap window a change may ask for: None (the default) or 0..3600 seconds."""
    if seconds is not None and not 0 <= seconds <= MAX_PREVIOUS_VALID_SECONDS:
        raise BrowserAuthConfigError(f"previous_valid_seconds must be between 0 and {MAX_PREVIOUS_VALID_SECONDS}")


@dataclass(frozen=True, slots=True)
class PreviousSecret:
    """An HS256 secret a rotation replaced, still accepted until `valid_until` (database clock)."""

    secret: str = field(repr=False)
    valid_until: datetime
    key_id: str | None = field(default=None, compare=False)  # the random id it is shown by (not a hash of it)


def previous_secret_after(
    current: str | None,
    previous: PreviousSecret | None,
    new_secret: str | None,
    previous_valid_seconds: int | None,
    now: datetime,
) -> PreviousSecret | None:
    """Which replaced HS256 secret stays valid once `new_secret` (None: JWKS only) is set, and until when.

    * The secret changes: the replaced one stays valid for `previous_valid_seconds` (None: the
      default 900 s; 0: a hard cut-over). An older previous secret is dropped.
    * The secret stays: an open window stays as it is; `previous_valid_seconds`, when given,
      can only shorten it (0 closes it).
    * A secret is never its own previous one, so setting a secret again never overlaps with itself.
    """
    if current is not None and current != new_secret:
        seconds = DEFAULT_PREVIOUS_VALID_SECONDS if previous_valid_seconds is None else previous_valid_seconds
        return PreviousSecret(current, now + timedelta(seconds=seconds)) if seconds > 0 else None
    if previous is None or previous.valid_until <= now or previous.secret == new_secret:
        return None
    if previous_valid_seconds is None:
        return previous
    until = min(previous.valid_until, now + timedelta(seconds=previous_valid_seconds))
    return PreviousSecret(previous.secret, until) if until > now else None


async def store_config(
    conn: asyncpg.Connection,
    config: BrowserAuthConfig,
    previous_valid_seconds: int | None = None,
    jwks_allowed_hosts: frozenset[str] = frozenset(),
) -> PreviousSecret | None:
    """Store (replace) a tenant's config in the caller's transaction; returns the previous
    HS256 secret still valid after the change, if any.

    The JWKS URL is checked as written (`jwks_allowed_hosts`: ``VOXGATE_JWKS_ALLOWED_HOSTS``);
    the caller resolves its host first with `config.check_resolved`, before it holds a
    connection (a slow DNS answer must not pin a pooled connection in a transaction).
    Raises `BrowserAuthConfigError` or `asyncpg.ForeignKeyViolationError`.
    """
    config.validate(jwks_allowed_hosts)
    validate_previous_valid_seconds(previous_valid_seconds)
    row = await conn.fetchrow(LOCK_FOR_CHANGE, config.tenant_id)
    previous = None
    key_id = new_id("hsk") if config.hs256_secret is not None else None
    if row is not None:
        stored = row["hs256_previous_secret"]
        before = PreviousSecret(stored, row["hs256_previous_until"]) if stored is not None else None
        previous = previous_secret_after(
            row["hs256_secret"], before, config.hs256_secret, previous_valid_seconds, row["now"]
        )
        # A secret keeps its id while it is stored (as the secret or as the previous one).
        ids = {row["hs256_secret"]: row["hs256_key_id"], stored: row["hs256_previous_key_id"]}
        ids.pop(None, None)
        key_id = ids.get(config.hs256_secret, key_id) if config.hs256_secret is not None else None
        if previous is not None:
            previous = replace(previous, key_id=ids.get(previous.secret) or new_id("hsk"))
    await conn.execute(
        UPSERT_CONFIG,
        config.tenant_id,
        config.hs256_secret,
        config.jwks_url,
        config.audience,
        previous.secret if previous else None,
        previous.valid_until if previous else None,
        key_id,
        previous.key_id if previous else None,
    )
    return previous


@dataclass(frozen=True, slots=True)
class StoredBrowserKeys:
    """A tenant's config as stored, with the previous HS256 secret while its window is open."""

    config: BrowserAuthConfig
    previous_secret: str | None = field(default=None, repr=False)
    previous_seconds_left: float = 0.0  # of the overlap window, by the database clock, when read


class BrowserAuthStore:
    """Per-tenant browser-token keys in Postgres (`tenant_browser_auth`)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, tenant_id: str) -> BrowserAuthConfig | None:
        """The tenant's config, or None if it has none or the tenant is disabled."""
        stored = await self.keys(tenant_id)
        return stored.config if stored is not None else None

    async def keys(self, tenant_id: str) -> StoredBrowserKeys | None:
        """The tenant's config and open previous secret, or None if it has none or the tenant is disabled."""
        row = await self._pool.fetchrow(GET_CONFIG, tenant_id)
        if row is None:
            return None
        config = BrowserAuthConfig(row["tenant_id"], row["hs256_secret"], row["jwks_url"], row["audience"])
        return StoredBrowserKeys(config, row["previous_secret"], row["previous_seconds_left"] or 0.0)

    async def set(
        self,
        config: BrowserAuthConfig,
        previous_valid_seconds: int | None = None,
        jwks_allowed_hosts: frozenset[str] = frozenset(),
    ) -> PreviousSecret | None:
        """Store (replace) a tenant's config; see `store_config`."""
        config.validate(jwks_allowed_hosts)
        await config.check_resolved(jwks_allowed_hosts)
        async with self._pool.acquire() as conn, conn.transaction():
            return await store_config(conn, config, previous_valid_seconds, jwks_allowed_hosts)

    async def clear(self, tenant_id: str) -> bool:
        """Remove a tenant's config, the previous HS256 secret included."""
        return await self._pool.fetchval(DELETE_CONFIG, tenant_id) is not None


class BrowserKeyChanges:
    """Announces, within one process, that a tenant's browser-token keys were changed here.

    The admin API publishes; whoever caches keys (a `BrowserTokenVerifier`'s owner)
    subscribes and forgets them at once, so neither side imports the other. Other replicas
    follow within `gateway.auth.browser.CONFIG_CACHE_SECONDS`.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call `listener(tenant_id)` after each change published from now on."""
        self._listeners.append(listener)

    def publish(self, tenant_id: str) -> None:
        for listener in list(self._listeners):
            listener(tenant_id)
