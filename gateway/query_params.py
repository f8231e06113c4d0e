"""Unknown query parameters are refused on every HTTP route, as OpenAI refuses them: 400 `unknown_parameter`.

A route's parameters are the ones its handler declares (Litestar's kwargs model of it, path
parameters and dependencies apart). A handler that reads its query string itself (and refuses
unknown names there: the Costs API, a translation offer's `model`) or ignores it on purpose (health
probes with cache busters, `/metrics` with Prometheus's `name[]`, OpenAI's webhooks at a URL that
may carry the operator's own query, static pages) says so with `opt={PARSES_OWN_QUERY: True}`.
WebSocket routes check their own query before accepting (gateway.session.admission,
gateway.live.route, gateway.translation.socket).

The check runs just before the handler: after the guards of the routes that authenticate in
guards (the admin API), before the handler's own authentication elsewhere (an unknown name is
refused even to a caller without credentials; it reveals nothing).
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request
from litestar.handlers import HTTPRouteHandler

from gateway.errors import GatewayError

PARSES_OWN_QUERY: Final = "parses_own_query"

# (handler, its path parameters) -> the query names it declares (None: it parses its own). Keyed by
# the handler's id, holding the handler, so an id is never reused while its entry lives (handlers live
# as long as their app); by path parameters too, as one handler may serve paths with and without one.
_declared: dict[tuple[int, frozenset[str]], tuple[HTTPRouteHandler, frozenset[str] | None]] = {}


def declared_query_names(handler: HTTPRouteHandler, path_parameters: dict[str, Any]) -> frozenset[str] | None:
    key = (id(handler), frozenset(path_parameters))
    entry = _declared.get(key)
    if entry is not None and entry[0] is handler:
        return entry[1]
    names: frozenset[str] | None = None
    if not handler.opt.get(PARSES_OWN_QUERY):
        model = handler.create_kwargs_model(path_parameters=dict.fromkeys(path_parameters))  # type: ignore[arg-type]
        names = frozenset(parameter.field_alias for parameter in model.expected_query_params)
    _declared[key] = (handler, names)
    return names


async def refuse_unknown_query(request: Request[Any, Any, Any]) -> None:
    """The app's `before_request` (see the module docstring for when it runs)."""
    if not request.scope.get("query_string"):
        return
    handler = request.route_handler
    if not isinstance(handler, HTTPRouteHandler):
        return
    names = declared_query_names(handler, request.path_params)
    if names is None:
        return
    for name in request.query_params:
        if name not in names:
            shown = name[:64]
            raise GatewayError(400, f"Unknown parameter: '{shown}'.", code="unknown_parameter", param=shown)
