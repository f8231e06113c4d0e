"""Audited changes to tenants and keys, shared by the admin API and the CLI.

Each function makes one change and writes its audit row (`actor` = the JWT subject, or
"cli"). Policy and tier changes live on `PolicyStore`, which audits them the same way.
"""

from __future__ import annotations

import asyncpg

from gateway.storage.policy_store import PolicyStore, audit
from gateway.storage.tenants import IssuedKey, Tenant, TenantDirectory

SET_NEW_TENANT_TIER = "UPDATE tenants SET tier = $2 WHERE id = $1"
KEY_TENANT = "SELECT tenant_id FROM api_keys WHERE id = $1"


async def create_tenant(pool: asyncpg.Pool, store: PolicyStore, name: str, tier: str | None, actor: str) -> Tenant:
    """Create a tenant, optionally on a tier. Raises UnknownTier, TenantExists or ValueError."""
    store.check_tier(tier)
    tenant = await TenantDirectory(pool).create_tenant(name)
    async with pool.acquire() as conn, conn.transaction():
        if tier is not None:
            await conn.execute(SET_NEW_TENANT_TIER, tenant.id, tier)
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
    tenant_id: str | None = await pool.fetchval(KEY_TENANT, key_id)
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
