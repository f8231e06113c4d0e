"""`GET /v1/organization/costs`: OpenAI's Costs API over voxgate's ledger, for finance.

Who may read: an admin JWT (the admin API's keys) with role `admin` (every tenant) or
`finance` (every tenant, or only the tenant of its `tenant_id` claim). A tenant's API key is
a 403 `insufficient_role`; no credential a 401; another tenant named in `project_ids` by a
tenant-scoped token a 404, as the admin API answers out-of-scope tenants.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl

import orjson
from litestar import Request, Response, Router, get
from litestar.di import NamedDependency, Provide

from gateway.admin.security import tenant_not_found
from gateway.admin.tokens import AdminPrincipal, AdminTokenVerifier
from gateway.alerts.routes import finance_principal, finance_scope
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.finance.costs import query_costs
from gateway.finance.export import csv_header, csv_rows, focus_rows, page_json, render_csv, render_focus
from gateway.query_params import PARSES_OWN_QUERY
from gateway.services import services_of
from gateway.settings import AdminSettings
from policies.finance import CostQuery, CostQueryError, parse_cost_query

COSTS_PATH = "/v1/organization/costs"
#: A CSV page says where the next one starts in these headers (JSON says it in the body).
NEXT_PAGE_HEADER = "voxgate-next-page"
HAS_MORE_HEADER = "voxgate-has-more"


def build_costs_router(
    settings: AdminSettings, jwks_allowed_hosts: frozenset[str] = frozenset(), clock: Clock = SYSTEM_CLOCK
) -> Router:
    """The Costs API, verifying admin JWTs with the admin API's keys."""
    verifier = AdminTokenVerifier(settings, jwks_allowed_hosts, clock)
    return Router(
        path="/",
        route_handlers=[list_costs],
        dependencies={
            "verifier": Provide(lambda: verifier, use_cache=True, sync_to_thread=False),
        },
    )


@get(COSTS_PATH, operation_id="organization_costs_list", tags=["finance"], opt={PARSES_OWN_QUERY: True})
async def list_costs(request: Request[Any, Any, Any], verifier: NamedDependency[AdminTokenVerifier]) -> Response[bytes]:
    """Costs per bucket (`1d`, `1h`, `1mo` in zone `tz`), grouped; `format=json|csv|focus` (docs/finance.md)."""
    principal = await finance_principal(request, verifier)
    try:
        query = parse_cost_query(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True))
        query = scoped(query, principal)
        if query.format == "focus":
            query = dataclasses.replace(query, group_by=("project_id", "line_item"), tag_key=None, group_tag_sets=True)
        services = services_of(request)
        page = await query_costs(services.read_pool, query, services.clock)
    except CostQueryError as exc:
        raise GatewayError(400, exc.message, code="invalid_request", param=exc.param) from None
    if query.format == "json":
        return Response(orjson.dumps(page_json(page)), media_type="application/json")
    headers = {HAS_MORE_HEADER: "true" if page.has_more else "false"}
    if page.next_page is not None:
        headers[NEXT_PAGE_HEADER] = page.next_page
    if query.format == "csv":
        text = render_csv(csv_header(query.group_by), csv_rows(page))
    else:
        text = render_focus(await focus_rows(services.read_pool, page))
    return Response(text.encode(), media_type="text/csv", headers=headers)  # Litestar adds "; charset=utf-8"


def scoped(query: CostQuery, principal: AdminPrincipal) -> CostQuery:
    """`query` within what `principal` may read (`finance_scope`, as the alert log and dashboard):
    a tenant-scoped finance token sees its tenant only; without `finance:read` a 403 naming it."""
    tenant = finance_scope(principal, None)
    if tenant is None:
        return query
    for other in query.project_ids or ():
        if other != tenant:
            raise dataclasses.replace(tenant_not_found(other), param="project_ids")
    return dataclasses.replace(query, project_ids=(tenant,))
