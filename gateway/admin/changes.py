"""Audited changes to tenants, keys, policies and browser-token keys, shared by the admin API and the CLI.

Each function makes one change and writes its audit row (`actor` = the JWT subject, or
"cli"); neither front end makes a change any other way. A policy change is `PolicyStore`'s
(it versions, audits and announces it), reached through `set_policy` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.auth.browser_keys import DELETE_CONFIG, GET_BROWSER_AUTH, BrowserAuthConfig, store_config
from gateway.storage import queries
from gateway.storage.policy_store import PolicyStore, audit
from gateway.storage.tenants import IssuedKey, Tenant, TenantDirectory


async def create_tenant(pool: asyncpg.Pool, store: PolicyStore, name: str, tier: str | None, actor: str) -> Tenant:
    """Create a tenant, optionally on a tier. Raises UnknownTier, TenantExists or ValueError."""
    store.check_tier(tier)
    tenant = await TenantDirectory(pool).create_tenant(name)
    async with pool.acquire() as conn, conn.transaction():
        if tier is not None:
            await conn.execute(queries.SET_TENANT_TIER, tenant.id, tier)
        await audit(conn, actor, tenant.id, "tenant.create", {"name": tenant.name, "tier": tier})
    return tenant


async def set_tenant_disabled(pool: asyncpg.Pool, tenant_id: str, disabled: bool, actor: str) -> bool:
    """Disable or enable a tenant; False (and no audit row) when it already was."""
    directory = TenantDirectory(pool)
    changed = await (directory.disable_tenant(tenant_id) if disabled else directory.enable_tenant(tenant_id))
    if changed:
        await audit(pool, actor, tenant_id, "tenant.disable" if disabled else "tenant.enable", {})
    return changed


async def create_key(pool: asyncpg.Pool, tenant_id: str, name: str | None, actor: str) -> IssuedKey:
    """Issue a key (the secret exists only in the returned object). Raises TenantNotFound."""
    issued = await TenantDirectory(pool).create_key(tenant_id, name=name)
    await audit(pool, actor, tenant_id, "key.create", {"key_id": issued.id, "name": name, "prefix": issued.prefix})
    return issued


async def key_tenant(pool: asyncpg.Pool, key_id: str) -> str | None:
    """The tenant a key belongs to, or None for an unknown key."""
    tenant_id: str | None = await pool.fetchval(queries.KEY_TENANT, key_id)
    return tenant_id


async def revoke_key(pool: asyncpg.Pool, key_id: str, actor: str, tenant_id: str | None = None) -> bool:
    """Revoke a key (of `tenant_id`, when given). False if unknown, another tenant's, or already revoked."""
    owner = await key_tenant(pool, key_id)
    if owner is None or (tenant_id is not None and owner != tenant_id):
        return False
    revoked = await TenantDirectory(pool).revoke_key(key_id)
    if revoked:
        await audit(pool, actor, owner, "key.revoke", {"key_id": key_id})
    return revoked


async def set_policy(store: PolicyStore, tenant_id: str, changes: Mapping[str, Any], actor: str) -> int:
    """Lay `changes` (tier-shaped, partial; None removes a limit) over the tenant's policy in force and
    store the next version; returns its number. `PolicyStore.set` locks, versions, audits and announces
    it to live sessions. Raises PolicyError (naming the key) or TenantNotFound."""
    return await store.set(tenant_id, changes, actor)


# -- browser-token keys --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrowserAuthInfo:
    """What may be shown about a tenant's browser-token keys: never an HS256 secret itself."""

    tenant_id: str
    hs256_key_id: str | None  # a random id naming the secret (`hsk_…`), never derived from it
    jwks_url: str | None
    audience: str
    created_at: datetime
    updated_at: datetime
    previous_hs256_key_id: str | None = None  # a replaced secret still valid until previous_valid_until
    previous_valid_until: datetime | None = None

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, on in (("hs256", self.hs256_key_id), ("jwks", self.jwks_url)) if on]


def _details(info: BrowserAuthInfo) -> dict[str, object]:
    """The audit detail of a change: key ids and the overlap window, never a secret or a hash of one."""
    return {
        "hs256_key_id": info.hs256_key_id,
        "jwks_url": info.jwks_url,
        "audience": info.audience,
        "previous_hs256_key_id": info.previous_hs256_key_id,
        "previous_valid_until": info.previous_valid_until.isoformat() if info.previous_valid_until else None,
    }


async def browser_auth(conn: asyncpg.Pool | asyncpg.Connection, tenant_id: str) -> BrowserAuthInfo | None:
    """A tenant's browser-token key metadata, or None when it has none (disabled tenants included)."""
    row = await conn.fetchrow(GET_BROWSER_AUTH, tenant_id)
    if row is None:
        return None
    return BrowserAuthInfo(
        tenant_id,
        row["hs256_key_id"],
        row["jwks_url"],
        row["audience"],
        row["created_at"],
        row["updated_at"],
        row["previous_key_id"],
        row["previous_valid_until"],
    )


async def set_browser_auth(
    pool: asyncpg.Pool,
    config: BrowserAuthConfig,
    actor: str,
    previous_valid_seconds: int | None = None,
    jwks_allowed_hosts: frozenset[str] = frozenset(),
) -> BrowserAuthInfo:
    """Set (or rotate: replace whole) a tenant's browser-token keys; the audit row holds key ids only.

    A replaced HS256 secret stays valid for `previous_valid_seconds` (None: the default 900 s;
    0: a hard cut-over), as `gateway.auth.browser_keys.previous_secret_after` decides.
    Raises `BrowserAuthConfigError` (short secret, bad URL, bad window) or `asyncpg.ForeignKeyViolationError`.
    """
    config.validate(jwks_allowed_hosts)
    await config.check_resolved(jwks_allowed_hosts)  # before a connection is held (store_config)
    async with pool.acquire() as conn, conn.transaction():
        await store_config(conn, config, previous_valid_seconds, jwks_allowed_hosts)
        info = await browser_auth(conn, config.tenant_id)
        assert info is not None
        await audit(conn, actor, config.tenant_id, "browser_auth.set", _details(info))
    return info


async def clear_browser_auth(pool: asyncpg.Pool, tenant_id: str, actor: str) -> bool:
    """Remove a tenant's browser-token keys; False (and no audit row) when it had none."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(DELETE_CONFIG, tenant_id) is None:
            return False
        await audit(conn, actor, tenant_id, "browser_auth.delete", {})
    return True
