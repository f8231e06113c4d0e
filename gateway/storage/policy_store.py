"""Tenant policies in Postgres: versioned documents, tier assignment, and the audit log.

The policy in force for a tenant (`PolicyStore.effective`) is, in order:

1. the latest version the tenant has in ``tenant_policies`` (source ``"tenant"``);
2. else the tenant's assigned tier from the tiers file (source ``"tier"``);
3. else the default tier (``VOXGATE_DEFAULT_TIER``) if the tiers file defines it, otherwise
   ``UNRESTRICTED`` (source ``"default"``).

A tenant whose assigned tier is no longer in the tiers file falls through to 3 (logged).
A change (`PolicyStore.set`) names only what it changes: it is laid over the policy in force
(`merge_policy`), so a limit it does not mention is kept; ``null`` removes a limit.
Every change is written with its audit row in one transaction, then announced as a
``policy_changed`` broadcast of the live state (Redis pub/sub across replicas, or this process
only with the in-memory one), so live sessions on every replica reload their policy within seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import asyncpg

from gateway.livestate import LiveStateBackend, MemoryLiveState
from gateway.storage import queries
from gateway.storage.tenants import TenantNotFound
from policies.policy import UNRESTRICTED, TenantPolicy, parse_policy, parse_stored_policy, policy_to_document

log = logging.getLogger("voxgate.policy_store")

PolicySource = Literal["tenant", "tier", "default"]


class UnknownTier(ValueError):
    """The named tier is not defined in the tiers file."""

    def __init__(self, tier: str, known: list[str]) -> None:
        super().__init__(f"unknown tier {tier!r}; the tiers file defines: {', '.join(known) or '(none)'}")
        self.tier = tier


class EffectivePolicy(NamedTuple):
    """The policy in force for a tenant, its version (tenant policies only) and where it came from."""

    policy: TenantPolicy
    version: int | None
    source: PolicySource


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One stored version of a tenant's policy."""

    tenant_id: str
    version: int
    document: dict[str, Any]
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    detail: dict[str, Any]


async def audit(
    conn_or_pool: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    tenant_id: str | None,
    action: str,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Append one audit row (who did what to which tenant); returns its id.

    Pass the connection of an open transaction to make the row commit with the change.
    """
    row_id = await conn_or_pool.fetchval(
        queries.INSERT_AUDIT, actor, tenant_id, action, json.dumps(dict(detail or {}), default=str)
    )
    return int(row_id)


async def audit_entries(pool: asyncpg.Pool, tenant_id: str, limit: int = 100) -> list[AuditEntry]:
    """A tenant's most recent audit rows, newest first."""
    rows = await pool.fetch(queries.AUDIT_FOR_TENANT, tenant_id, limit)
    return [AuditEntry(**{**dict(row), "detail": json.loads(row["detail"])}) for row in rows]


def merge_policy(current: TenantPolicy, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The document `changes` makes of `current`: each key it names replaces that key, except
    `budget`, whose keys are replaced one by one; a key set to null removes that limit.

    A budget with no limit keeps no alerts, so a limit set onto one gets the default `alert_at`.
    """
    merged = policy_to_document(current)
    for key, value in changes.items():
        if key == "budget" and isinstance(value, Mapping):
            budget = dict(merged["budget"])
            if budget["daily_usd"] is None and budget["monthly_usd"] is None:
                del budget["alert_at"]
            merged["budget"] = {**budget, **value}
        else:
            merged[key] = value
    return merged


class PolicyStore:
    """Reads and changes tenant policies; announces every change to every replica."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        tiers: Mapping[str, TenantPolicy],
        default_tier: str | None,
        broadcasts: LiveStateBackend | None = None,
    ) -> None:
        self._pool = pool
        self.tiers = dict(tiers)
        self.default_tier = default_tier
        # Without a shared live state, a change is announced to this process only.
        self._broadcasts = broadcasts if broadcasts is not None else MemoryLiveState(instance_id="policy-store")

    @property
    def default_policy(self) -> TenantPolicy:
        """What a tenant with no policy and no (known) tier gets."""
        if self.default_tier is not None and self.default_tier in self.tiers:
            return self.tiers[self.default_tier]
        return UNRESTRICTED

    async def effective(self, tenant_id: str) -> EffectivePolicy:
        """The policy in force for `tenant_id` (see the module docstring for the order)."""
        return self._effective(tenant_id, await self._pool.fetchrow(queries.EFFECTIVE_POLICY, tenant_id))

    def _effective(self, tenant_id: str, row: asyncpg.Record | None) -> EffectivePolicy:
        if row is None:
            raise TenantNotFound(f"no tenant with id {tenant_id!r}")
        if row["version"] is not None:
            return EffectivePolicy(parse_stored_policy(json.loads(row["document"])), row["version"], "tenant")
        tier = row["tier"]
        if tier is not None:
            if tier in self.tiers:
                return EffectivePolicy(self.tiers[tier], None, "tier")
            log.warning("tenant %s has tier %r, which the tiers file no longer defines", tenant_id, tier)
        return EffectivePolicy(self.default_policy, None, "default")

    async def tier_of(self, tenant_id: str) -> str | None:
        """The tier assigned to a tenant (None if none). Raises TenantNotFound."""
        row = await self._pool.fetchrow(queries.EFFECTIVE_POLICY, tenant_id)
        if row is None:
            raise TenantNotFound(f"no tenant with id {tenant_id!r}")
        tier: str | None = row["tier"]
        return tier

    async def tenant_tiers(self) -> dict[str, str | None]:
        """Every tenant's assigned tier, by tenant id."""
        return {row["id"]: row["tier"] for row in await self._pool.fetch(queries.TENANT_TIERS)}

    async def set(self, tenant_id: str, changes: Mapping[str, Any], actor: str) -> int:
        """Lay a (partial) tier-shaped mapping over the policy in force; store the result as the next version.

        Keys `changes` does not name keep their value, `null` removes a limit (`merge_policy`).
        Raises PolicyError (naming the key) for an invalid mapping, TenantNotFound for an
        unknown tenant, UnknownTier when the tenant's tier (the base of the change) is not in these
        tiers. Returns the new version number.
        """
        parse_policy(changes)  # names the offending key before any database work
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchrow(queries.LOCK_TENANT, tenant_id) is None:
                raise TenantNotFound(f"no tenant with id {tenant_id!r}")
            # Read under the tenant row lock, so two concurrent changes cannot undo each other.
            row = await conn.fetchrow(queries.EFFECTIVE_POLICY, tenant_id)
            if row is not None and row["version"] is None and row["tier"] is not None and row["tier"] not in self.tiers:
                # The change lays over the tenant's tier, which these tiers do not define (a CLI run
                # without the gateway's VOXGATE_POLICY_FILE): merging over the default would store a
                # policy the tenant never had.
                raise UnknownTier(row["tier"], sorted(self.tiers))
            current = self._effective(tenant_id, row)
            stored = policy_to_document(parse_policy(merge_policy(current.policy, changes)))
            row = await conn.fetchrow(queries.INSERT_POLICY_VERSION, tenant_id, json.dumps(stored), actor)
            version = int(row["version"])
            await audit(conn, actor, tenant_id, "policy.set", {"version": version, "document": stored})
        await self.notify(tenant_id)
        return version

    async def history(self, tenant_id: str) -> list[PolicyVersion]:
        """Every stored version of a tenant's policy, newest first (empty if it never had one)."""
        rows = await self._pool.fetch(queries.POLICY_HISTORY, tenant_id)
        return [PolicyVersion(**{**dict(row), "document": json.loads(row["document"])}) for row in rows]

    def check_tier(self, tier: str | None) -> None:
        """Raise UnknownTier unless `tier` is None or defined in the tiers file."""
        if tier is not None and tier not in self.tiers:
            raise UnknownTier(tier, sorted(self.tiers))

    async def set_tier(self, tenant_id: str, tier: str | None, actor: str) -> None:
        """Assign a tier (None clears it). Raises UnknownTier or TenantNotFound."""
        self.check_tier(tier)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(queries.LOCK_TENANT, tenant_id)
            if row is None:
                raise TenantNotFound(f"no tenant with id {tenant_id!r}")
            await conn.execute(queries.SET_TENANT_TIER, tenant_id, tier)
            await audit(conn, actor, tenant_id, "tenant.tier", {"tier": tier, "previous": row["tier"]})
        await self.notify(tenant_id)

    async def notify(self, tenant_id: str) -> None:
        """Tell every replica that `tenant_id`'s policy changed. Best effort: the change is stored."""
        try:
            await self._broadcasts.publish("policy_changed", tenant_id)
        except Exception as exc:  # a Redis outage must not undo or fail a stored change
            log.warning("could not publish the policy change of %s: %s", tenant_id, type(exc).__name__)
