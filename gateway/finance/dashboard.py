"""`/dashboard`: finance's page over the Costs API, served by the gateway, working offline.

The page (`gateway/static/dashboard/`: one HTML file, one script, one stylesheet, no library,
nothing from a CDN) signs in with a finance or admin JWT held in `sessionStorage`, never in a
URL, and reads only JSON APIs: `GET /v1/organization/costs` for every amount and
`GET /v1/organization/budgets` (here) for tenant names and limits. Strict CSP: no inline
script or style, same origin only, and `form-action 'none'` so the sign-in form can never be
submitted (and so never put the token in a URL), even with the script broken.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from gateway.admin.security import tenant_not_found
from gateway.admin.tokens import AdminTokenVerifier
from gateway.alerts.routes import finance_principal, finance_scope
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.query_params import PARSES_OWN_QUERY
from gateway.services import services_of
from gateway.settings import AdminSettings

PAGE_PATH: Final = "/dashboard"
_ASSETS: Final = {
    "index.html": "text/html",  # Litestar adds "; charset=utf-8" to text/ types
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _asset(name: str) -> bytes:
    return (files("gateway") / "static" / "dashboard" / name).read_bytes()


@get(
    [PAGE_PATH, PAGE_PATH + "/", PAGE_PATH + "/{name:str}"],
    operation_id="dashboard_page",
    include_in_schema=False,
    opt={PARSES_OWN_QUERY: True},  # cache busters on the page and its assets: ignored
    sync_to_thread=False,
)
def dashboard_page(name: FromPath[str] = "index.html") -> Response[bytes]:
    """The page and its two assets; nothing else under /dashboard/ is a file."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFoundException()
    return Response(_asset(name), media_type=media_type, headers=HEADERS)


def build_dashboard_router(settings: AdminSettings, jwks_hosts: frozenset[str], clock: Clock = SYSTEM_CLOCK) -> Router:
    """The page and `GET /v1/organization/budgets`, with the Costs API's finance access rule."""
    verifier = AdminTokenVerifier(settings, jwks_hosts, clock)

    @get("/v1/organization/budgets", operation_id="organization_budgets", tags=["finance"])
    async def list_budgets(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Each tenant the caller may read: its name and the budget limits of its policy (micro-USD, UTC periods)."""
        scope = finance_scope(await finance_principal(request, verifier), None)
        services = services_of(request)
        tenants = await services.tenants.list_tenants()
        if scope is not None:
            tenants = [t for t in tenants if t.id == scope]
            if not tenants:
                raise tenant_not_found(scope)
        data = []
        for tenant in tenants:
            budget = (await services.policy_store.effective(tenant.id)).policy.budget
            data.append(
                {
                    "object": "organization.budget",
                    "project_id": tenant.id,
                    "name": tenant.name,
                    "daily_budget_micro_usd": budget.daily_micro_usd,
                    "monthly_budget_micro_usd": budget.monthly_micro_usd,
                    "alert_at": list(budget.alert_at),
                }
            )
        return {"object": "list", "data": data}

    return Router(path="/", route_handlers=[dashboard_page, list_budgets])
