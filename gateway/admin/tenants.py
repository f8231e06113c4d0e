"""Tenants and their API keys: `/admin/v1/tenants[/{tenant_id}[/keys]]`."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from gateway.admin import changes
from gateway.admin.schemas import (
    IssuedKeyOut,
    KeyCreate,
    KeyList,
    KeyOut,
    TenantCreate,
    TenantList,
    TenantOut,
    TierAssignment,
)
from gateway.admin.security import KeyId, Principal, Services, TenantId, tenant_not_found
from gateway.admin.tokens import AdminPrincipal, Permission
from gateway.errors import GatewayError
from gateway.services import GatewayServices
from gateway.storage.policy_store import PolicyStore, UnknownTier
from gateway.storage.tenants import Tenant, TenantExists


def policy_store(services: GatewayServices) -> PolicyStore:
    return services.policy_store


async def existing_tenant(services: GatewayServices, tenant_id: str) -> Tenant:
    tenant = await services.tenants.get_tenant(tenant_id)
    if tenant is None:
        raise tenant_not_found(tenant_id)
    return tenant


def unknown_tier(exc: UnknownTier) -> GatewayError:
    return GatewayError(400, str(exc), code="unknown_tier", param="tier")


class TenantsController(Controller):
    path = "/tenants"
    tags = ["admin: tenants"]

    @post(
        "/",
        operation_id="admin_create_tenant",
        status_code=HTTP_201_CREATED,
        opt={"permission": Permission.TENANTS_CREATE},
    )
    async def create_tenant(self, data: JSONBody[TenantCreate], services: Services, principal: Principal) -> TenantOut:
        """Create a tenant, optionally on a named tier from the tiers file."""
        try:
            tenant = await changes.create_tenant(
                services.pool, policy_store(services), data.name, data.tier, principal.subject
            )
        except UnknownTier as exc:
            raise unknown_tier(exc) from None
        except TenantExists as exc:
            raise GatewayError(409, str(exc), code="tenant_exists", param="name") from None
        except ValueError as exc:
            raise GatewayError(400, str(exc), code="invalid_tenant_name", param="name") from None
        return TenantOut.of(tenant, data.tier)

    @get("/", operation_id="admin_list_tenants", opt={"permission": Permission.TENANTS_READ})
    async def list_tenants(self, services: Services, principal: Principal) -> TenantList:
        """Every tenant the caller may see (a tenant_admin sees only its own), oldest first."""
        tiers = await policy_store(services).tenant_tiers()
        tenants = [t for t in await services.tenants.list_tenants() if principal.sees_tenant(t.id)]
        return TenantList(data=[TenantOut.of(t, tiers.get(t.id)) for t in tenants])

    @get("/{tenant_id:str}", operation_id="admin_get_tenant", opt={"permission": Permission.TENANTS_READ})
    async def get_tenant(self, tenant_id: TenantId, services: Services) -> TenantOut:
        """One tenant."""
        tenant = await existing_tenant(services, tenant_id)
        return TenantOut.of(tenant, await policy_store(services).tier_of(tenant_id))

    @post(
        "/{tenant_id:str}/disable",
        operation_id="admin_disable_tenant",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.TENANTS_WRITE},
    )
    async def disable_tenant(self, tenant_id: TenantId, services: Services, principal: Principal) -> TenantOut:
        """Stop every key of the tenant from authenticating (idempotent)."""
        return await self._set_disabled(tenant_id, True, services, principal)

    @post(
        "/{tenant_id:str}/enable",
        operation_id="admin_enable_tenant",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.TENANTS_WRITE},
    )
    async def enable_tenant(self, tenant_id: TenantId, services: Services, principal: Principal) -> TenantOut:
        """Undo a disable (idempotent)."""
        return await self._set_disabled(tenant_id, False, services, principal)

    @put("/{tenant_id:str}/tier", operation_id="admin_set_tenant_tier", opt={"permission": Permission.TENANTS_WRITE})
    async def set_tier(
        self, tenant_id: TenantId, data: JSONBody[TierAssignment], services: Services, principal: Principal
    ) -> TenantOut:
        """Assign a tier (null clears it). Applies when the tenant has no policy version of its own."""
        await existing_tenant(services, tenant_id)
        try:
            await policy_store(services).set_tier(tenant_id, data.tier, principal.subject)
        except UnknownTier as exc:
            raise unknown_tier(exc) from None
        return TenantOut.of(await existing_tenant(services, tenant_id), data.tier)

    @staticmethod
    async def _set_disabled(
        tenant_id: str, disabled: bool, services: GatewayServices, principal: AdminPrincipal
    ) -> TenantOut:
        await existing_tenant(services, tenant_id)
        await changes.set_tenant_disabled(services.pool, tenant_id, disabled, principal.subject)
        tenant = await existing_tenant(services, tenant_id)
        return TenantOut.of(tenant, await policy_store(services).tier_of(tenant_id))


class KeysController(Controller):
    path = "/tenants/{tenant_id:str}/keys"
    tags = ["admin: keys"]

    @get("/", operation_id="admin_list_keys", opt={"permission": Permission.KEYS_READ})
    async def list_keys(self, tenant_id: TenantId, services: Services) -> KeyList:
        """A tenant's keys, revoked ones included; never secrets or hashes."""
        await existing_tenant(services, tenant_id)
        return KeyList(data=[KeyOut.of(k) for k in await services.tenants.list_keys(tenant_id)])

    @post("/", operation_id="admin_create_key", status_code=HTTP_201_CREATED, opt={"permission": Permission.KEYS_WRITE})
    async def create_key(
        self, tenant_id: TenantId, services: Services, principal: Principal, data: JSONBody[KeyCreate | None] = None
    ) -> IssuedKeyOut:
        """Issue a key. The response holds the secret; it is shown this once."""
        await existing_tenant(services, tenant_id)
        name = data.name if data is not None else None
        return IssuedKeyOut.of(await changes.create_key(services.pool, tenant_id, name, principal.subject))

    @delete(
        "/{key_id:str}",
        operation_id="admin_revoke_key",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.KEYS_WRITE},
    )
    async def revoke_key(self, tenant_id: TenantId, key_id: KeyId, services: Services, principal: Principal) -> KeyOut:
        """Revoke a key for good; 404 if the tenant has no active key with that id."""
        await existing_tenant(services, tenant_id)
        if not await changes.revoke_key(services.pool, key_id, principal.subject, tenant_id=tenant_id):
            raise GatewayError(
                404, f"Tenant has no active key with id '{key_id}'.", code="key_not_found", param="key_id"
            )
        key = next(k for k in await services.tenants.list_keys(tenant_id) if k.id == key_id)
        return KeyOut.of(key)
