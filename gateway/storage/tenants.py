"""The tenant directory: tenants, their API keys, and turning a presented secret into an identity.

Secrets never touch the database or the logs: only ``sha256(secret)`` and a 12-character
display prefix are stored, and no message or ``repr`` here ever contains a secret.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from gateway.auth.apikeys import generate_api_key, hash_api_key, looks_like_api_key, new_key_id
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ids import TENANT_PREFIX, new_id
from gateway.storage import queries

log = logging.getLogger("voxgate.tenants")

MAX_TENANT_NAME_LENGTH = 200
# `last_used_at` is bookkeeping: written at most once a minute per key per replica (the query
# throttles across replicas too), in the background, never on the session's path.
KEY_USE_WRITE_INTERVAL_S = 60.0
# Writes in flight at once; beyond this a use is skipped and a later authentication records it.
MAX_KEY_USE_WRITES_IN_FLIGHT = 2
# Keys remembered for the throttle before the stale ones are forgotten.
MAX_TRACKED_KEY_USES = 50_000


class TenantDirectoryError(Exception):
    """Base class for errors the tenant directory reports to its callers."""


class TenantExists(TenantDirectoryError):
    """A tenant with that name already exists (names are unique)."""


class TenantNotFound(TenantDirectoryError):
    """No tenant has the given id."""


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime
    disabled_at: datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created. ``secret`` exists only in this object; it is never stored."""

    id: str
    tenant_id: str
    prefix: str
    secret: str = field(repr=False)
    name: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What can be shown about an existing key: never its secret or its hash."""

    id: str
    tenant_id: str
    prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """Who a valid secret belongs to."""

    key_id: str
    tenant_id: str
    tenant_name: str


class TenantDirectory:
    """Tenants and API keys in Postgres, over an ``asyncpg.Pool``."""

    def __init__(
        self, pool: asyncpg.Pool, key_use_interval_s: float = KEY_USE_WRITE_INTERVAL_S, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._pool = pool
        self._key_use_interval_s = key_use_interval_s
        self._clock = clock  # times the `last_used_at` throttle
        self._key_used: dict[str, float] = {}  # key id -> when its use was last written (monotonic)
        self._key_use_writes: set[asyncio.Task[None]] = set()

    async def create_tenant(self, name: str) -> Tenant:
        """Create a tenant. Raises ``TenantExists`` if the name is taken, ``ValueError`` if blank."""
        name = name.strip()
        if not name or len(name) > MAX_TENANT_NAME_LENGTH:
            raise ValueError(f"tenant name must be 1 to {MAX_TENANT_NAME_LENGTH} characters")
        try:
            row = await self._pool.fetchrow(queries.INSERT_TENANT, new_id(TENANT_PREFIX), name)
        except asyncpg.UniqueViolationError as exc:
            raise TenantExists(f"a tenant named {name!r} already exists") from exc
        assert row is not None
        return _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        """All tenants, oldest first."""
        return [_tenant(row) for row in await self._pool.fetch(queries.LIST_TENANTS)]

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._pool.fetchrow(queries.GET_TENANT, tenant_id)
        return None if row is None else _tenant(row)

    async def disable_tenant(self, tenant_id: str) -> bool:
        """Stop every key of the tenant from authenticating. False if unknown or already disabled."""
        return await self._pool.fetchval(queries.DISABLE_TENANT, tenant_id) is not None

    async def enable_tenant(self, tenant_id: str) -> bool:
        """Undo ``disable_tenant``. False if unknown or not disabled."""
        return await self._pool.fetchval(queries.ENABLE_TENANT, tenant_id) is not None

    async def create_key(self, tenant_id: str, name: str | None = None) -> IssuedKey:
        """Issue a new key for a tenant. Raises ``TenantNotFound`` for an unknown tenant id."""
        generated = generate_api_key()
        try:
            row = await self._pool.fetchrow(
                queries.INSERT_API_KEY, new_key_id(), tenant_id, generated.prefix, generated.key_hash, name
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise TenantNotFound(f"no tenant with id {tenant_id!r}") from exc
        assert row is not None
        return IssuedKey(
            id=row["id"],
            tenant_id=row["tenant_id"],
            prefix=row["prefix"],
            secret=generated.secret,
            name=row["name"],
            created_at=row["created_at"],
        )

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key for good. False if no such key exists or it was already revoked."""
        return await self._pool.fetchval(queries.REVOKE_API_KEY, key_id) is not None

    async def list_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """A tenant's keys, revoked ones included, oldest first (empty for an unknown tenant)."""
        rows = await self._pool.fetch(queries.LIST_API_KEYS, tenant_id)
        return [ApiKeyInfo(**dict(row)) for row in rows]

    async def authenticate(self, secret: str) -> KeyIdentity | None:
        """The identity behind a presented secret, or None.

        None for anything malformed, unknown, revoked, or belonging to a disabled tenant;
        the caller cannot (and should not) tell these apart.
        """
        if not looks_like_api_key(secret):
            return None
        presented = hash_api_key(secret)
        row = await self._pool.fetchrow(queries.AUTHENTICATE_API_KEY, presented)
        if row is None or not hmac.compare_digest(bytes(row["key_hash"]), presented):
            return None
        self._note_key_use(row["key_id"])
        return KeyIdentity(key_id=row["key_id"], tenant_id=row["tenant_id"], tenant_name=row["tenant_name"])

    async def record_key_use(self, key_id: str) -> None:
        """Bump ``last_used_at``; written at most once a minute per key, so cheap to call often."""
        await self._pool.execute(queries.TOUCH_API_KEY, key_id)

    async def wait_for_key_uses(self) -> None:
        """Wait until the ``last_used_at`` writes started so far are done."""
        if self._key_use_writes:
            await asyncio.gather(*self._key_use_writes, return_exceptions=True)

    def _note_key_use(self, key_id: str) -> None:
        """Start a background ``last_used_at`` write unless this key's was written recently."""
        now = self._clock.monotonic()
        last = self._key_used.get(key_id)
        if last is not None and now - last < self._key_use_interval_s:
            return
        if len(self._key_use_writes) >= MAX_KEY_USE_WRITES_IN_FLIGHT:
            return  # Postgres is slow: bookkeeping waits for a later authentication
        if len(self._key_used) >= MAX_TRACKED_KEY_USES:
            self._key_used = {k: t for k, t in self._key_used.items() if now - t < self._key_use_interval_s}
            if len(self._key_used) >= MAX_TRACKED_KEY_USES:
                return
        self._key_used[key_id] = now
        task = asyncio.get_running_loop().create_task(self._write_key_use(key_id), name="voxgate-key-last-used")
        self._key_use_writes.add(task)
        task.add_done_callback(self._key_use_writes.discard)

    async def _write_key_use(self, key_id: str) -> None:
        try:
            await self.record_key_use(key_id)
        except Exception as exc:  # bookkeeping only: never fails an authentication
            self._key_used.pop(key_id, None)  # the next authentication tries again
            log.warning("could not record the use of key %s: %s", key_id, type(exc).__name__)


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(id=row["id"], name=row["name"], created_at=row["created_at"], disabled_at=row["disabled_at"])
