"""A caller refused on the alert delivery log is told the permission it lacks (`finance:read`), not one
it holds: a `tenant_admin` may read its tenant's usage (`usage:read`) and alert webhook
(`alerts:read`), but the organization's finance views need the `finance` or `admin` role
(docs/admin-api.md, "Roles"; docs/finance.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.settings import AdminSettings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, claims, hs256
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway

pytestmark = pytest.mark.e2e

MISSING = "This token's roles do not allow finance:read."


@pytest.fixture
async def admin_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(
        settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None)
    )
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


async def test_the_403_names_the_permission_the_caller_lacks(admin_gateway: Gateway, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "alerts-perm")
    tenant_admin = {"authorization": f"Bearer {hs256(claims(roles=['tenant_admin'], tenant_id=tenant.tenant_id))}"}
    async with httpx.AsyncClient(base_url=admin_gateway.server.http_url) as http:
        # The permissions it does hold work: its usage (usage:read).
        usage = await http.get(f"/admin/v1/tenants/{tenant.tenant_id}/usage", headers=tenant_admin)
        assert usage.status_code == 200, usage.text

        for headers in (tenant_admin, {"authorization": f"Bearer {tenant.secret}"}):  # and a tenant's API key
            denied = await http.get("/v1/organization/alerts", headers=headers)
            assert denied.status_code == 403
            error = denied.json()["error"]
            assert (error["code"], error["message"]) == ("insufficient_role", MISSING)

        # One alert for the token's own tenant and one for another: a scoped finance token lists its own only.
        other = await make_tenant(pg_pool, "alerts-perm-other")
        for alert_id, owner in (("alert-own", tenant.tenant_id), ("alert-other", other.tenant_id)):
            await pg_pool.execute(
                "INSERT INTO budget_alerts (id, tenant_id, period, period_start, threshold, budget_micro_usd,"
                " spent_micro_usd, crossed_at, next_attempt_at, given_up_at)"
                " VALUES ($1, $2, 'day', current_date, 0.8, 1000000, 800000, now(), now(), now())",
                alert_id,
                owner,
            )
        finance = {"authorization": f"Bearer {hs256(claims(roles=['finance'], tenant_id=tenant.tenant_id))}"}
        allowed = await http.get("/v1/organization/alerts", headers=finance)
        assert allowed.status_code == 200, allowed.text
        assert [row["id"] for row in allowed.json()["data"]] == ["alert-own"]
        # Naming the other tenant is the admin API's 404 for an out-of-scope tenant, not its alerts.
        elsewhere = await http.get(f"/v1/organization/alerts?project_id={other.tenant_id}", headers=finance)
        assert elsewhere.status_code == 404, elsewhere.text
