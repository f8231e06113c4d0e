"""A query parameter a route does not take is refused (400 `unknown_parameter`, naming it), on every
HTTP route, as OpenAI refuses one; before, the admin API, the alert log, the budgets view and the
`/v1/realtime` HTTP routes answered 200 and ignored it (so a typo such as `?limt=5` went unnoticed).
Declared parameters still work, and a caller without credentials still gets 401 first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.settings import AdminSettings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def gw(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER))
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


def assert_unknown(response: httpx.Response, name: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": f"Unknown parameter: '{name}'.",
            "type": "invalid_request_error",
            "code": "unknown_parameter",
            "param": name,
        }
    }


async def test_unknown_query_parameters_are_refused_on_every_http_route(gw: Gateway, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "query")
    admin = {"Authorization": f"Bearer {admin_token()}"}
    key = {"Authorization": f"Bearer {tenant.secret}"}
    tenant_path = f"/admin/v1/tenants/{tenant.tenant_id}"
    async with httpx.AsyncClient(base_url=gw.server.http_url) as http:
        for method, path, headers in [
            ("GET", "/admin/v1/tenants?bogus=1", admin),
            ("GET", f"{tenant_path}/keys?bogus=1", admin),
            ("GET", f"{tenant_path}/audit?limt=5", admin),
            ("GET", f"{tenant_path}/usage?sinse=2026-01-01", admin),
            ("GET", "/v1/organization/alerts?project_ids=x", admin),
            ("GET", "/v1/organization/budgets?bogus=1", admin),
            ("POST", "/v1/realtime/client_secrets?bogus=1", key),
            ("GET", "/v1/realtime/calls/rtc_none?bogus=1", key),
        ]:
            name = path.split("?")[1].split("=")[0]
            assert_unknown(
                await http.request(method, path, headers=headers, json={} if method == "POST" else None), name
            )
        # Declared parameters are fine, and refusing the unknown one comes after authentication.
        assert (await http.get(f"{tenant_path}/audit?limit=5", headers=admin)).status_code == 200
        assert (await http.get(f"{tenant_path}/usage?since=2026-01-01T00:00:00Z", headers=admin)).status_code == 200
        assert (await http.get("/v1/organization/alerts?limit=3", headers=admin)).status_code == 200
        assert (await http.get("/admin/v1/tenants?bogus=1")).status_code == 401
        # Routes that ignore their query on purpose: probes with cache busters, Prometheus's filter.
        assert (await http.get("/healthz?t=123")).status_code == 200
        assert (await http.get("/readyz?t=123")).status_code == 200
        assert (await http.get("/metrics?name[]=voxgate_live_sessions")).status_code == 200
        # The Costs API parses its own query and refuses unknown names there, the same way.
        costs = await http.get("/v1/organization/costs?start_time=0&bogus=1", headers=admin)
        assert costs.status_code == 400 and costs.json()["error"]["param"] == "bogus", costs.text


async def test_a_bad_query_value_names_its_parameter_on_every_route(gw: Gateway, pg_pool: asyncpg.Pool) -> None:
    # Found by a hostile review: the alert log answered `limit=0` with `code` and `param` null
    # (only the admin API named the field).
    admin = {"Authorization": f"Bearer {admin_token()}"}
    async with httpx.AsyncClient(base_url=gw.server.http_url) as http:
        for path in ("/v1/organization/alerts?limit=0", "/v1/organization/alerts?limit=abc"):
            response = await http.get(path, headers=admin)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"], error["type"]) == (
                "invalid_request",
                "limit",
                "invalid_request_error",
            )


async def test_an_error_does_not_echo_a_huge_input_whole(gw: Gateway, pg_pool: asyncpg.Pool) -> None:
    # Found by a hostile review: a 5,000-character call id came back whole in the error message.
    tenant = await make_tenant(pg_pool, "echo")
    async with httpx.AsyncClient(base_url=gw.server.http_url) as http:
        response = await http.get(
            f"/v1/realtime/calls/rtc_{'x' * 5000}", headers={"Authorization": f"Bearer {tenant.secret}"}
        )
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "call_not_found" and len(error["message"]) <= 512 and error["message"].endswith("…")
