"""Policies, tiers, usage and the audit trail: `/admin/v1/tenants/{tenant_id}/...` and `/admin/v1/tiers`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, get, put
from litestar.params import JSONBody, QueryParameter

from gateway.admin import changes
from gateway.admin.schemas import AuditList, AuditOut, PolicyHistory, PolicyOut, PolicyVersionOut, TierList, UsageOut
from gateway.admin.security import Principal, Services, TenantId
from gateway.admin.tenants import existing_tenant, policy_store, unknown_tier
from gateway.admin.tokens import Permission
from gateway.errors import GatewayError
from gateway.ledger.reports import ledger_for_tenant
from gateway.services import GatewayServices
from gateway.storage.policy_store import UnknownTier, audit_entries
from policies.policy import PolicyError, policy_to_document


class PoliciesController(Controller):
    path = "/tenants/{tenant_id:str}/policy"
    tags = ["admin: policies"]

    @get("/", operation_id="admin_get_policy", opt={"permission": Permission.POLICY_READ})
    async def get_policy(self, tenant_id: TenantId, services: Services) -> PolicyOut:
        """The policy in force, with its version (tenant policies only) and source."""
        await existing_tenant(services, tenant_id)
        return await _policy_out(services, tenant_id)

    @put("/", operation_id="admin_set_policy", opt={"permission": Permission.POLICY_WRITE})
    async def set_policy(
        self, tenant_id: TenantId, data: JSONBody[dict[str, Any]], services: Services, principal: Principal
    ) -> PolicyOut:
        """Lay a (partial) tier-shaped policy over the one in force and store it as the next version.

        Keys the body does not name keep their value; `null` removes a limit. Live sessions reload it.
        """
        await existing_tenant(services, tenant_id)
        try:
            await changes.set_policy(policy_store(services), tenant_id, data, principal.subject)
        except PolicyError as exc:
            raise GatewayError(400, f"Invalid policy: {exc}", code="invalid_policy", param=exc.key) from None
        except UnknownTier as exc:
            raise unknown_tier(exc) from None
        return await _policy_out(services, tenant_id)

    @get("/history", operation_id="admin_get_policy_history", opt={"permission": Permission.POLICY_READ})
    async def get_history(self, tenant_id: TenantId, services: Services) -> PolicyHistory:
        """Every stored version of the tenant's policy, newest first."""
        await existing_tenant(services, tenant_id)
        versions = await policy_store(services).history(tenant_id)
        return PolicyHistory(tenant_id=tenant_id, data=[PolicyVersionOut.of(v) for v in versions])


class ReportsController(Controller):
    path = "/tenants/{tenant_id:str}"

    @get("/usage", operation_id="admin_get_usage", tags=["admin: usage"], opt={"permission": Permission.USAGE_READ})
    async def get_usage(
        self,
        tenant_id: TenantId,
        services: Services,
        since: Annotated[datetime | None, QueryParameter(description="ISO 8601; UTC when no offset is given")] = None,
    ) -> UsageOut:
        """The tenant's responses with tokens and cost (integer micro-USD), then totals."""
        await existing_tenant(services, tenant_id)
        if since is not None and since.utcoffset() is None:
            since = since.replace(tzinfo=UTC)
        try:  # the database compares in UTC: year 1 at +14:00 or year 9999 at -14:00 has no UTC time
            if since is not None:
                since.astimezone(UTC)
        except OverflowError:
            raise GatewayError(
                400, "'since' is out of range once converted to UTC.", code="invalid_request", param="since"
            ) from None
        return UsageOut.of(await ledger_for_tenant(services.pool, tenant_id, since))

    @get("/audit", operation_id="admin_list_audit", tags=["admin: audit"], opt={"permission": Permission.AUDIT_READ})
    async def list_audit(
        self, tenant_id: TenantId, services: Services, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> AuditList:
        """The tenant's most recent audit rows (policy, tier, key and status changes; budget events)."""
        await existing_tenant(services, tenant_id)
        return AuditList(data=[AuditOut.of(e) for e in await audit_entries(services.pool, tenant_id, limit)])


@get("/tiers", operation_id="admin_list_tiers", tags=["admin: policies"], opt={"permission": Permission.TIERS_READ})
async def list_tiers(services: Services) -> TierList:
    """The tiers file as loaded, and which tier is the default."""
    store = policy_store(services)
    default = store.default_tier if store.default_tier in store.tiers else None
    return TierList(default_tier=default, tiers={n: policy_to_document(p) for n, p in store.tiers.items()})


async def _policy_out(services: GatewayServices, tenant_id: str) -> PolicyOut:
    store = policy_store(services)
    effective = await store.effective(tenant_id)
    return PolicyOut(
        tenant_id=tenant_id,
        source=effective.source,
        version=effective.version,
        tier=await store.tier_of(tenant_id),
        policy=policy_to_document(effective.policy),
    )
