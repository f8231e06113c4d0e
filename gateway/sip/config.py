"""The operator's SIP routing: which tenant answers each called number, and where its calls are announced.

`/admin/v1/tenants/{tenant_id}/sip` (permission `policy:write` to change, `policy:read` to read):
`numbers` are the user parts of the SIP `To` URI the tenant answers (`+18005550100`), each
routed to one tenant; `webhook_url` and `webhook_secret` (a Standard Webhooks `whsec_…`) are
where voxgate delivers the tenant's `live.transport.incoming` events, signed with that secret.
The secret goes in and never comes out (docs/live.md#sip).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg
import msgspec
from litestar import Controller, delete, get, put
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from gateway.admin.security import Principal, Services, TenantId
from gateway.admin.tenants import existing_tenant
from gateway.admin.tokens import Permission
from gateway.alerts.signing import WebhookSecretError, secret_key
from gateway.errors import GatewayError
from gateway.storage.policy_store import audit

NUMBER: Final = re.compile(r"[A-Za-z0-9+*#._-]{1,64}")
MAX_NUMBERS: Final = 1000

TENANT_FOR: Final = "SELECT tenant_id FROM sip_routes WHERE called = $1"
NUMBERS_OF: Final = "SELECT called FROM sip_routes WHERE tenant_id = $1 ORDER BY called"
TAKEN_BY_OTHERS: Final = "SELECT called FROM sip_routes WHERE called = ANY($1::text[]) AND tenant_id <> $2"
CLEAR_NUMBERS: Final = "DELETE FROM sip_routes WHERE tenant_id = $1"
ADD_NUMBERS: Final = "INSERT INTO sip_routes (called, tenant_id) SELECT unnest($1::text[]), $2"
WEBHOOK_OF: Final = "SELECT url, secret FROM tenant_sip_webhooks WHERE tenant_id = $1"
SET_WEBHOOK: Final = """
INSERT INTO tenant_sip_webhooks (tenant_id, url, secret) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret, updated_at = now()
"""
CLEAR_WEBHOOK: Final = "DELETE FROM tenant_sip_webhooks WHERE tenant_id = $1"


@dataclass(frozen=True, slots=True)
class SipWebhook:
    url: str
    secret: str


class SipConfig:
    """The `sip_routes` and `tenant_sip_webhooks` tables (migration 0019)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def tenant_for(self, called: str) -> str | None:
        tenant: str | None = await self._pool.fetchval(TENANT_FOR, called)
        return tenant

    async def numbers(self, tenant_id: str) -> list[str]:
        return [row["called"] for row in await self._pool.fetch(NUMBERS_OF, tenant_id)]

    async def webhook(self, tenant_id: str) -> SipWebhook | None:
        row = await self._pool.fetchrow(WEBHOOK_OF, tenant_id)
        return None if row is None else SipWebhook(row["url"], row["secret"])

    async def replace(self, tenant_id: str, numbers: list[str], webhook: SipWebhook) -> list[str]:
        """Set the tenant's numbers and webhook; returns the numbers another tenant holds (nothing changed).

        Two tenants claiming one number at once: the loser's insert hits the primary key, its
        whole transaction rolls back and it gets the number back as taken (a 409, never a 500)."""
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                taken = [row["called"] for row in await connection.fetch(TAKEN_BY_OTHERS, numbers, tenant_id)]
                if taken:
                    return taken
                await connection.execute(CLEAR_NUMBERS, tenant_id)
                await connection.execute(ADD_NUMBERS, numbers, tenant_id)
                await connection.execute(SET_WEBHOOK, tenant_id, webhook.url, webhook.secret)
        except asyncpg.UniqueViolationError:
            taken = [row["called"] for row in await self._pool.fetch(TAKEN_BY_OTHERS, numbers, tenant_id)]
            return taken or numbers
        return []

    async def clear(self, tenant_id: str) -> bool:
        async with self._pool.acquire() as connection, connection.transaction():
            numbers: str = await connection.execute(CLEAR_NUMBERS, tenant_id)
            hook: str = await connection.execute(CLEAR_WEBHOOK, tenant_id)
        return numbers != "DELETE 0" or hook != "DELETE 0"


class SipRoutingSet(msgspec.Struct, forbid_unknown_fields=True):
    numbers: list[str]
    webhook_url: str
    webhook_secret: str  # whsec_… (Standard Webhooks)


class SipRoutingOut(msgspec.Struct):
    tenant_id: str
    numbers: list[str]
    webhook_url: str | None
    webhook_secret_set: bool


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, code="invalid_request", param=param)


def validate_routing(data: SipRoutingSet) -> tuple[list[str], SipWebhook]:
    """The numbers (sorted, unique) and webhook of a routing request; a 400 GatewayError if invalid."""
    numbers = sorted(set(data.numbers))
    if len(numbers) > MAX_NUMBERS or not all(NUMBER.fullmatch(n) for n in numbers):
        raise _invalid(
            f"'numbers' must be up to {MAX_NUMBERS} SIP user parts (e.g. '+18005550100'): letters, digits, +*#._-",
            "numbers",
        )
    url = urlsplit(data.webhook_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise _invalid("'webhook_url' must be an http(s) URL.", "webhook_url")
    try:
        secret_key(data.webhook_secret)
    except WebhookSecretError as exc:
        raise _invalid(f"'webhook_secret' {exc}.", "webhook_secret") from None
    return numbers, SipWebhook(data.webhook_url, data.webhook_secret)


class SipRoutingController(Controller):
    """Platform admins route called numbers to a tenant and set where its inbound calls are announced."""

    path = "/tenants/{tenant_id:str}/sip"
    tags = ["admin: SIP routing"]

    @get("/", operation_id="admin_get_sip_routing", opt={"permission": Permission.POLICY_READ})
    async def get_sip_routing(self, tenant_id: TenantId, services: Services) -> SipRoutingOut:
        """The tenant's numbers and webhook URL (never the secret)."""
        await existing_tenant(services, tenant_id)
        config = SipConfig(services.pool)
        webhook = await config.webhook(tenant_id)
        url = webhook.url if webhook else None
        return SipRoutingOut(tenant_id, await config.numbers(tenant_id), url, webhook is not None)

    @put("/", operation_id="admin_set_sip_routing", opt={"permission": Permission.POLICY_WRITE})
    async def set_sip_routing(
        self, tenant_id: TenantId, data: JSONBody[SipRoutingSet], services: Services, principal: Principal
    ) -> SipRoutingOut:
        """Replace the tenant's called numbers and webhook; a number another tenant holds is a 409."""
        await existing_tenant(services, tenant_id)
        numbers, webhook = validate_routing(data)
        taken = await SipConfig(services.pool).replace(tenant_id, numbers, webhook)
        if taken:
            message = f"Number(s) {', '.join(taken)} are routed to another tenant; remove them there first."
            raise GatewayError(409, message, code="sip_number_taken", param="numbers")
        await audit(
            services.pool, principal.subject, tenant_id, "sip_routing.set", {"numbers": numbers, "url": webhook.url}
        )
        return SipRoutingOut(tenant_id, numbers, webhook.url, True)

    @delete(
        "/",
        operation_id="admin_delete_sip_routing",
        status_code=HTTP_200_OK,
        opt={"permission": Permission.POLICY_WRITE},
    )
    async def delete_sip_routing(self, tenant_id: TenantId, services: Services, principal: Principal) -> dict[str, Any]:
        """Route no number to the tenant any more; 404 when it had no routing."""
        await existing_tenant(services, tenant_id)
        if not await SipConfig(services.pool).clear(tenant_id):
            raise GatewayError(404, f"Tenant '{tenant_id}' has no SIP routing.", code="sip_routing_not_configured")
        await audit(services.pool, principal.subject, tenant_id, "sip_routing.clear", {})
        return {"tenant_id": tenant_id, "deleted": True}
