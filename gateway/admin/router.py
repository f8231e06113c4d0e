"""Assemble the admin API router: JWT guard, dependencies, and OpenAI-shaped validation errors."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide
from litestar.openapi.spec import Components, SecurityScheme

from gateway.admin.browser_auth import BrowserAuthController
from gateway.admin.policies import PoliciesController, ReportsController, list_tiers
from gateway.admin.security import admin_guard, provide_principal, provide_services
from gateway.admin.tenants import KeysController, TenantsController
from gateway.admin.tokens import AdminTokenVerifier
from gateway.alerts.routes import AlertWebhookController
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings import AdminSettings
from gateway.sip.config import SipRoutingController

ADMIN_PATH = "/admin/v1"
SECURITY_SCHEME = "AdminJWT"
_BEARER_JWT = SecurityScheme(type="http", scheme="bearer", bearer_format="JWT", description="An admin JWT")
SECURITY_COMPONENTS = Components(security_schemes={SECURITY_SCHEME: _BEARER_JWT})


def build_admin_router(
    settings: AdminSettings, jwks_allowed_hosts: frozenset[str] = frozenset(), clock: Clock = SYSTEM_CLOCK
) -> Router:
    """`/admin/v1`: every route needs an admin JWT and the permission it names in `opt`."""
    return Router(
        path=ADMIN_PATH,
        route_handlers=[
            TenantsController,
            KeysController,
            BrowserAuthController,
            AlertWebhookController,
            SipRoutingController,
            PoliciesController,
            ReportsController,
            list_tiers,
        ],
        guards=[admin_guard(AdminTokenVerifier(settings, jwks_allowed_hosts, clock))],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        security=[{SECURITY_SCHEME: []}],
    )
