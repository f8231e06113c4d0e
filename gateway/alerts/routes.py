"""HTTP surfaces of budget alerts: the delivery log and a tenant's own webhook.

* `GET /v1/organization/alerts`: the delivery log, for an admin or finance JWT; a finance
  token with a `tenant_id` claim sees only that tenant (another tenant's id is a 404), as on
  the Costs API (`finance_principal` and `finance_scope` serve the dashboard's reads too).
* `/admin/v1/tenants/{tenant_id}/alert-webhook`: the webhook that overrides
  `VOXGATE_ALERT_WEBHOOK_URL` for one tenant. The secret goes in and never comes out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Router, delete, get, put
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK

from gateway.admin.security import Principal, Services, TenantId, tenant_not_found
from gateway.admin.tenants import existing_tenant
from gateway.admin.tokens import AdminPrincipal, AdminTokenVerifier, Permission, bearer_token, insufficient_role
from gateway.alerts.outbox import AlertOutbox, Webhook
from gateway.alerts.signing import WebhookSecretError, secret_key
from gateway.auth.apikeys import looks_like_api_key
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.services import services_of
from gateway.settings import AdminSettings
from gateway.storage.policy_store import audit


async def finance_principal(request: Request[Any, Any, Any], verifier: AdminTokenVerifier) -> AdminPrincipal:
    """The verified caller of a finance view; a tenant's API key is a 403, as on the Costs API."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        return await verifier.verify(token)
    except GatewayError:
        if looks_like_api_key(token):  # a known kind of caller with the wrong kind of credential
            raise insufficient_role(Permission.FINANCE_READ) from None
        raise


def finance_scope(principal: AdminPrincipal, tenant_id: str | None) -> str | None:
    """The tenant a finance view may show: the token's own for a scoped finance token, else `tenant_id`.

    The view needs `finance:read` (roles `admin` and `finance`); a `tenant_admin` holds
    `usage:read` and `alerts:read` but not this, and the 403 names what is missing."""
    if not principal.grants(Permission.FINANCE_READ, None):
        raise insufficient_role(Permission.FINANCE_READ)
    if principal.unscoped:  # admin, or finance without a tenant_id claim
        return tenant_id
    if tenant_id is not None and tenant_id != principal.tenant_id:
        raise tenant_not_found(tenant_id)
    return principal.tenant_id


def build_alert_log_router(settings: AdminSettings, jwks_hosts: frozenset[str], clock: Clock = SYSTEM_CLOCK) -> Router:
    verifier = AdminTokenVerifier(settings, jwks_hosts, clock)

    @get("/alerts", operation_id="organization_alerts", tags=["finance"])
    async def list_alerts(
        request: Request[Any, Any, Any],
        project_id: str | None = Parameter(default=None, description="A tenant id: only its alerts."),
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The budget alert delivery log, newest first: threshold, period, attempts, last status."""
        tenant_id = finance_scope(await finance_principal(request, verifier), project_id)
        rows = await AlertOutbox(services_of(request).pool).deliveries(tenant_id, limit)
        return {"object": "list", "data": rows}

    return Router(path="/v1/organization", route_handlers=[list_alerts])


class AlertWebhookSet(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    secret: str  # whsec_… (Standard Webhooks)


class AlertWebhookOut(msgspec.Struct):
    tenant_id: str
    url: str
    secret_set: bool = True


def _valid_webhook(data: AlertWebhookSet) -> Webhook:
    if urlsplit(data.url).scheme not in ("http", "https") or not urlsplit(data.url).hostname:
        raise GatewayError(400, "'url' must be an http(s) URL.", code="invalid_request", param="url")
    try:
        secret_key(data.secret)
    except WebhookSecretError as exc:
        raise GatewayError(400, f"'secret' {exc}.", code="invalid_request", param="secret") from None
    return Webhook(data.url, data.secret)


def webhook_not_configured(tenant_id: str) -> GatewayError:
    return GatewayError(
        404, f"Tenant '{tenant_id}' has no alert webhook of its own.", code="alert_webhook_not_configured"
    )


class AlertWebhookController(Controller):
    """Platform admins route a tenant's budget alerts to the tenant's own receiver (`alerts:write`);
    finance and the tenant's tenant_admin may read where they go (`alerts:read`), never the secret."""

    path = "/tenants/{tenant_id:str}/alert-webhook"
    tags = ["admin: budget alerts"]

    @get("/", operation_id="admin_get_alert_webhook", opt={"permission": Permission.ALERTS_READ})
    async def get_alert_webhook(self, tenant_id: TenantId, services: Services) -> AlertWebhookOut:
        """The tenant's webhook URL (the secret is never returned); 404 when it uses the global one."""
        await existing_tenant(services, tenant_id)
        webhook = await AlertOutbox(services.pool).tenant_webhook(tenant_id)
        if webhook is None:
            raise webhook_not_configured(tenant_id)
        return AlertWebhookOut(tenant_id, webhook.url)

    @put("/", operation_id="admin_set_alert_webhook", opt={"permission": Permission.ALERTS_WRITE})
    async def set_alert_webhook(
        self, tenant_id: TenantId, data: JSONBody[AlertWebhookSet], services: Services, principal: Principal
    ) -> AlertWebhookOut:
        """Send this tenant's alerts to `url`, signed with `secret`, instead of the global webhook."""
        await existing_tenant(services, tenant_id)
        webhook = _valid_webhook(data)
        await AlertOutbox(services.pool).set_tenant_webhook(tenant_id, webhook)
        await audit(services.pool, principal.subject, tenant_id, "alert_webhook.set", {"url": webhook.url})
        return AlertWebhookOut(tenant_id, webhook.url)

    @delete(
        "/",
        operation_id="admin_delete_alert_webhook",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.ALERTS_WRITE},
    )
    async def delete_alert_webhook(
        self, tenant_id: TenantId, services: Services, principal: Principal
    ) -> dict[str, Any]:
        """Back to the global webhook; 404 if the tenant had none of its own."""
        await existing_tenant(services, tenant_id)
        if not await AlertOutbox(services.pool).clear_tenant_webhook(tenant_id):
            raise webhook_not_configured(tenant_id)
        await audit(services.pool, principal.subject, tenant_id, "alert_webhook.clear", {})
        return {"tenant_id": tenant_id, "deleted": True}
