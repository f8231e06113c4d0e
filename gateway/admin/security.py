"""The admin API's guard: verify the bearer JWT, then check the route's permission and tenant scope."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import Guard

from gateway.admin.tokens import (
    ROLE_PERMISSIONS,
    AdminPrincipal,
    AdminTokenVerifier,
    Permission,
    bearer_token,
    insufficient_role,
)
from gateway.errors import GatewayError
from gateway.services import GatewayServices, services_of

PRINCIPAL_STATE_KEY = "admin_principal"

# Handler parameters injected by name (the router provides "services" and "principal").
Services = NamedDependency[GatewayServices]
Principal = NamedDependency[AdminPrincipal]
TenantId = FromPath[str]
KeyId = FromPath[str]


def tenant_not_found(tenant_id: str) -> GatewayError:
    """The same answer for an unknown tenant and one outside a tenant_admin's scope."""
    return GatewayError(404, f"No tenant with id '{tenant_id}'.", code="tenant_not_found", param="tenant_id")


def admin_guard(verifier: AdminTokenVerifier) -> Guard:
    """A guard for every admin route; each route names its `Permission` in `opt["permission"]`."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        principal = await verifier.verify(bearer_token(connection.headers.get("authorization")))
        # Litestar's automatic OPTIONS answer (204 + Allow) names no permission and reads nothing.
        automatic_options = isinstance(handler, HTTPRouteHandler) and handler.http_methods == {"OPTIONS"}
        if automatic_options and "permission" not in handler.opt:
            return
        permission: Permission = handler.opt["permission"]
        tenant_id: str | None = connection.path_params.get("tenant_id")
        if not principal.grants(permission, tenant_id):
            role_allows = any(permission in ROLE_PERMISSIONS.get(role, ()) for role in principal.roles)
            if tenant_id is not None and role_allows:
                raise tenant_not_found(tenant_id)  # out of scope: do not reveal that it exists
            raise insufficient_role(permission)
        connection.state[PRINCIPAL_STATE_KEY] = principal

    return guard


def provide_principal(request: Request[Any, Any, Any]) -> AdminPrincipal:
    """The verified caller (set by the guard, which runs before dependencies resolve)."""
    principal: AdminPrincipal = request.state[PRINCIPAL_STATE_KEY]
    return principal


def provide_services(request: Request[Any, Any, Any]) -> GatewayServices:
    return services_of(request)
