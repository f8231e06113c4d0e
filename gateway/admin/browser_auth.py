"""A tenant's browser-token keys: `/admin/v1/tenants/{tenant_id}/browser-auth` (docs/admin-api.md).

The keys a tenant's backend signs browser JWTs with (docs/webrtc.md, "Browser tokens"):
an HS256 secret and/or a JWKS URL. They are the tenant's credentials, like its API keys,
so the same roles manage them (admin, and a tenant_admin for its own tenant). The HS256
secret goes in and never comes out: responses and audit rows carry a random key id. So does
the previous secret a rotation keeps valid for its overlap window.
"""

from __future__ import annotations

from dataclasses import replace

from litestar import Controller, delete, get, put
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from gateway.admin import changes
from gateway.admin.schemas import BrowserAuthDeleted, BrowserAuthOut, BrowserAuthSet
from gateway.admin.security import Principal, Services, TenantId
from gateway.admin.tenants import existing_tenant
from gateway.admin.tokens import Permission
from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthConfigError
from gateway.errors import GatewayError


def browser_auth_not_configured(tenant_id: str) -> GatewayError:
    return GatewayError(
        404, f"Tenant '{tenant_id}' has no browser-token keys.", code="browser_auth_not_configured", param="tenant_id"
    )


def _at_fault(config: BrowserAuthConfig, jwks_allowed_hosts: frozenset[str]) -> str | None:
    """Which field of an invalid config is wrong, found with the one validator, field by field."""
    for param, alone in (
        ("hs256_secret", replace(config, jwks_url=None)),
        ("jwks_url", replace(config, hs256_secret=None)),
    ):
        if getattr(config, param) is not None and not _valid(alone, jwks_allowed_hosts):
            return param
    # Each field is valid as written: what was refused is the JWKS host as it resolves now.
    return "jwks_url" if config.jwks_url is not None else None


def _valid(config: BrowserAuthConfig, jwks_allowed_hosts: frozenset[str]) -> bool:
    try:
        config.validate(jwks_allowed_hosts)
    except BrowserAuthConfigError:
        return False
    return True


class BrowserAuthController(Controller):
    path = "/tenants/{tenant_id:str}/browser-auth"
    tags = ["admin: browser auth"]

    @get("/", operation_id="admin_get_browser_auth", opt={"permission": Permission.KEYS_READ})
    async def get_browser_auth(self, tenant_id: TenantId, services: Services) -> BrowserAuthOut:
        """Which keys verify the tenant's browser JWTs: kinds, JWKS URL, audience, the HS256 secret's key id."""
        await existing_tenant(services, tenant_id)
        info = await changes.browser_auth(services.pool, tenant_id)
        if info is None:
            raise browser_auth_not_configured(tenant_id)
        return BrowserAuthOut.of(info)

    @put("/", operation_id="admin_set_browser_auth", opt={"permission": Permission.KEYS_WRITE})
    async def set_browser_auth(
        self,
        tenant_id: TenantId,
        data: JSONBody[BrowserAuthSet],
        services: Services,
        principal: Principal,
    ) -> BrowserAuthOut:
        """Set or rotate the keys (the whole config is replaced). A replaced HS256 secret stays valid for
        `previous_valid_seconds` (default 900; 0: refused at once on this replica, within 10 s on the others)."""
        await existing_tenant(services, tenant_id)
        config = BrowserAuthConfig(tenant_id, data.hs256_secret, data.jwks_url, data.audience)
        allowed = services.settings.security.jwks_allowed_hosts
        try:
            info = await changes.set_browser_auth(
                services.pool, config, principal.subject, data.previous_valid_seconds, allowed
            )
        except BrowserAuthConfigError as exc:
            raise GatewayError(
                400,
                f"Invalid browser-token keys: {exc}.",
                code="invalid_browser_auth",
                param=_at_fault(config, allowed),
            ) from None
        services.browser_key_changes.publish(tenant_id)
        return BrowserAuthOut.of(info)

    @delete(
        "/",
        operation_id="admin_delete_browser_auth",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.KEYS_WRITE},
    )
    async def delete_browser_auth(
        self, tenant_id: TenantId, services: Services, principal: Principal
    ) -> BrowserAuthDeleted:
        """Remove the keys: the tenant's browser JWTs are refused from then on; 404 if it had none."""
        await existing_tenant(services, tenant_id)
        if not await changes.clear_browser_auth(services.pool, tenant_id, principal.subject):
            raise browser_auth_not_configured(tenant_id)
        services.browser_key_changes.publish(tenant_id)
        return BrowserAuthDeleted(tenant_id=tenant_id)
