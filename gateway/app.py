"""The Litestar app factory and the one plugin that wires voxgate into it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final

import asyncpg
from litestar import Litestar, Request, Response, get
from litestar.config.app import AppConfig
from litestar.exceptions import ClientException, HTTPException
from litestar.handlers import asgi
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins import InitPluginProtocol, PluginProtocol
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import RedisError

from gateway import __version__
from gateway.admin.router import SECURITY_COMPONENTS, build_admin_router
from gateway.alerts.outbox import AlertOutbox
from gateway.alerts.recovery import AlertSweep
from gateway.alerts.routes import build_alert_log_router
from gateway.alerts.sender import AlertSender
from gateway.background import stop_tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import UNSTORABLE_TEXT, GatewayError, outage_refusal, unstorable_text
from gateway.finance.dashboard import build_dashboard_router
from gateway.finance.rates import register_price_rates
from gateway.finance.routes import build_costs_router
from gateway.ledger.writer import LedgerWriter
from gateway.live.route import live_sessions
from gateway.livestate import LiveState
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import counter, gauge
from gateway.pools import database_pool, redis_client, replica_pool
from gateway.price_file import PriceFileError, load_prices
from gateway.query_params import PARSES_OWN_QUERY, refuse_unknown_query
from gateway.realtime.fastrelay.fallback import refuse_realtime
from gateway.services import GatewayServices, LiveRegistry, attach_services, find_services, services_of
from gateway.session.enforcement import Enforcement
from gateway.settings import Settings, SettingsError
from gateway.sip.delivery import SipDelivery
from gateway.sip.inbound import openai_webhooks
from gateway.storage.migrations import required_schema_version, schema_version
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantDirectory
from gateway.telemetry import flush_tracing
from gateway.telemetry.relay_probe import sample_relays
from gateway.tiers import PolicyFileError, check_default_tier, load_tiers
from gateway.translation.routes import register as register_translation
from gateway.webrtc.routes import register as register_realtime_http
from gateway.webrtc.sideband import CallsMonitor
from policies.prices.table import PriceTable

log = logging.getLogger("voxgate.app")

# Probes with cache busters and Prometheus's `name[]` filter: these routes ignore their query.
IGNORED_QUERY: Final = {PARSES_OWN_QUERY: True}

# The schema this build needs: the highest migration it ships (read once from the package
# data, not kept by hand). `voxgate serve` refuses any other version; readiness waits for it.
REQUIRED_SCHEMA_VERSION = required_schema_version()


@asgi("/v1/realtime", copy_scope=False, operation_id="realtime_websocket", tags=["realtime"])
async def realtime(scope: Any, receive: Any, send: Any) -> None:
    """`GET /v1/realtime` WebSocket: the OpenAI Realtime API, metered per tenant.

    `voxgate serve` hands these upgrades to the fast relay before they reach the app
    (docs/relay.md); what reaches this route is refused.
    """
    await refuse_realtime(scope, receive, send)


@get("/healthz", operation_id="health_live", tags=["health"], sync_to_thread=False, opt=IGNORED_QUERY)
def healthz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    """Liveness: the process is up, its event loop answers and its ledger writer runs (a replica
    whose writer stopped would take usage it can never book: it must be restarted)."""
    services = find_services(request)
    if services is not None and not services.ledger.running:
        return Response({"status": "ledger_writer_stopped"}, status_code=503)
    return Response({"status": "ok"}, status_code=200)


@get("/readyz", operation_id="health_ready", tags=["health"], opt=IGNORED_QUERY)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Readiness: Postgres (with a new enough schema) and Redis answer, and we are not draining.

    Each dependency is named with "ok" or why not, e.g. `"postgres": "down: ConnectionRefusedError"`.
    """
    services = services_of(request)
    checks: dict[str, Any] = {"draining": services.live.draining, "live_sessions": len(services.live)}
    ok = not services.live.draining
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS), services.pool.acquire() as conn:
            version = await schema_version(conn)
        checks["schema_version"] = version
        checks["postgres"] = (
            "ok"
            if version >= REQUIRED_SCHEMA_VERSION
            else (f"schema version {version} is older than {REQUIRED_SCHEMA_VERSION}: run `voxgate migrate`")
        )
    except Exception as exc:
        checks["postgres"] = f"down: {type(exc).__name__}"
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_SECONDS):
            await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    checks["ledger_writer"] = "ok" if services.ledger.running else "stopped"
    ok = ok and checks["postgres"] == "ok" and checks["redis"] == "ok" and checks["ledger_writer"] == "ok"
    checks["status"] = "ready" if ok else "not_ready"
    checks["ledger_pending"] = services.ledger.pending
    return Response(checks, status_code=200 if ok else 503)


# A dependency that does not answer within this is reported down (a probe must not hang).
READY_CHECK_TIMEOUT_SECONDS = 2.0


@get("/metrics", operation_id="metrics", tags=["health"], include_in_schema=False, opt=IGNORED_QUERY)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics for this replica (behind `VOXGATE_METRICS_TOKEN` when it is set)."""
    services = services_of(request)
    token = services.settings.security.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            raise GatewayError(
                401,
                "GET /metrics needs 'Authorization: Bearer <VOXGATE_METRICS_TOKEN>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="voxgate-metrics"'},
            )
    return Response(services.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _scrape_time_metrics(services: GatewayServices) -> Callable[[], Iterator[Any]]:
    def collect() -> Iterator[Any]:
        stats = services.ledger.stats
        yield gauge("voxgate_live_sessions", "Sessions this replica is carrying.", len(services.live))
        yield gauge("voxgate_draining", "1 while this replica drains for shutdown.", float(services.live.draining))
        yield gauge("voxgate_ledger_pending", "Ledger records waiting for Postgres.", services.ledger.pending)
        yield counter(
            "voxgate_ledger_records",
            "Ledger records by outcome.",
            ["outcome"],
            {
                ("written",): stats.written,
                ("spilled",): stats.spilled,
                ("replayed",): stats.replayed,
                ("dropped",): stats.dropped,
                ("dead_lettered",): stats.dead_lettered,
                ("journaled",): stats.journaled,
                ("unconfirmed",): stats.unconfirmed,
            },
        )
        yield counter(
            "voxgate_ledger_retries", "Ledger batches retried after a Postgres failure.", [], {(): stats.retries}
        )

    return collect


def _gateway_error_handler(_: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return Response(exc.body(), status_code=exc.status, headers=exc.response_headers())


def _client_error_handler(_: Request[Any, Any, Any], exc: ClientException) -> Response[Any]:
    """Body and parameter validation failures, OpenAI-shaped, naming the offending field (every route)."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    detail = f"{exc.detail}: {first['message']}" if first.get("message") else str(exc.detail)
    code = "invalid_request" if exc.status_code == 400 else None
    error = GatewayError(exc.status_code, detail, code=code, param=first.get("key") or None)
    return Response(
        error.body(), status_code=exc.status_code, headers={**(exc.headers or {}), **error.response_headers()}
    )


def _http_exception_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    error = GatewayError(exc.status_code, str(exc.detail), code=None)
    return Response(
        error.body(), status_code=exc.status_code, headers={**(exc.headers or {}), **error.response_headers()}
    )


def _unstorable_text_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    error = unstorable_text()
    return Response(error.body(), status_code=error.status, headers=error.response_headers())


def _unhandled_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    services = find_services(request)
    error = outage_refusal(exc, services.clock if services is not None else SYSTEM_CLOCK)  # a retryable 503
    if error is not None:
        if services is not None:
            services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()
    else:
        log.exception("unhandled error", exc_info=exc)
        error = GatewayError(
            HTTP_500_INTERNAL_SERVER_ERROR, "The gateway had an internal error.", code="internal_error"
        )
    return Response(error.body(), status_code=error.status, headers=error.response_headers())


class VoxgatePlugin(InitPluginProtocol):
    """Routes, error shapes and the lifespan that owns pools, the ledger and live sessions."""

    def __init__(self, settings: Settings, prices: PriceTable | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        try:  # like the tiers file: a bad price file stops the start before anything listens
            self.prices = prices if prices is not None else load_prices(settings.pricing.price_file)
        except PriceFileError as exc:
            raise SettingsError(f"VOXGATE_PRICE_FILE: {exc}") from None
        self.clock = clock
        try:  # validated before anything listens, so a bad tiers file stops the start
            self.tiers = load_tiers(settings.admin.policy_file)
        except PolicyFileError as exc:
            raise SettingsError(f"VOXGATE_POLICY_FILE: {exc}") from None
        check_default_tier(self.tiers, settings.admin.default_tier, settings.admin.policy_file)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        admin = build_admin_router(self.settings.admin, self.settings.security.jwks_allowed_hosts, self.clock)
        costs = build_costs_router(self.settings.admin, self.settings.security.jwks_allowed_hosts, self.clock)
        app_config.route_handlers.extend([realtime, healthz, readyz, metrics, admin, costs])
        alert_log = build_alert_log_router(self.settings.admin, self.settings.security.jwks_allowed_hosts, self.clock)
        app_config.route_handlers.append(alert_log)  # GET /v1/organization/alerts (docs/finance.md)
        dashboard = build_dashboard_router(self.settings.admin, self.settings.security.jwks_allowed_hosts, self.clock)
        app_config.route_handlers.append(dashboard)  # /dashboard and GET /v1/organization/budgets
        register_realtime_http(app_config)  # client secrets, the SDP broker, call control (docs/webrtc.md)
        register_translation(app_config)  # /v1/realtime/translations (docs/translation.md)
        app_config.route_handlers.append(live_sessions)  # GET /v1/live/sessions, GPT-Live (docs/live.md)
        app_config.route_handlers.append(openai_webhooks)  # POST /v1/openai/webhooks: inbound SIP (docs/live.md)
        app_config.exception_handlers.update(
            {
                GatewayError: _gateway_error_handler,
                HTTPException: _http_exception_handler,
                ClientException: _client_error_handler,
                **dict.fromkeys(UNSTORABLE_TEXT, _unstorable_text_handler),
                Exception: _unhandled_handler,
            }
        )
        app_config.before_request = refuse_unknown_query  # on every HTTP route (gateway/query_params.py)
        app_config.lifespan.append(self._lifespan)
        return app_config

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Litestar) -> AsyncIterator[None]:
        settings = self.settings
        settings.require_services()
        pool = await database_pool(settings.database)  # bounded, blocking pools (gateway/pools.py)
        replica = await replica_pool(settings.database)  # the costs API's reads, if a replica is configured
        redis = redis_client(settings.redis)
        ledger = LedgerWriter(lambda: pool, settings.ledger, self.clock)
        ledger.start()
        live_state = LiveState(redis, settings.redis.key_prefix, settings.server.instance_id, self.clock)
        policy_store = PolicyStore(pool, self.tiers, settings.admin.default_tier, live_state)
        live = LiveRegistry()
        enforcement = Enforcement(
            live_state,
            policy_store,
            pool,
            ledger,
            self.prices,
            lambda: list(live.sessions),
            settings.enforcement,
            self.clock,
        )
        services = GatewayServices(
            settings=settings,
            pool=pool,
            redis=redis,
            tenants=TenantDirectory(pool, clock=self.clock),
            ledger=ledger,
            prices=self.prices,
            policy_store=policy_store,
            enforcement=enforcement,
            make_calls_monitor=lambda services: CallsMonitor(
                services,
                live_state,
                # half a lease TTL: a dead holder's calls are taken over before their leases lapse
                claim_ttl_s=settings.enforcement.lease_ttl_seconds / 2,
                scan_every_s=settings.enforcement.calls_scan_seconds,
            ),
            live=live,
            clock=self.clock,
            replica_pool=replica,
        )
        try:  # the rollups split responses into line items with these (docs/finance.md)
            await register_price_rates(pool, self.prices)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("could not register the price table's rates for cost line items: %s", exc)
        try:
            await live_state.load_scripts()
        except RedisError as exc:  # scripts are loaded again on first use (NOSCRIPT fallback)
            log.warning("could not load live-state scripts at start: %s", exc)
        services.enforcement.start()
        services.metrics.watch(services.enforcement.repairs.metrics)
        services.metrics.watch(_scrape_time_metrics(services))
        services.calls_monitor.start()
        background = services.background.pool  # a bounded share of the pool (gateway.storage.background)
        alerts = AlertSender(  # budget alert webhooks, and the ledger sweep that recovers missed crossings
            AlertOutbox(background), settings.alerts, self.clock, sweep=AlertSweep(background, policy_store, self.clock)
        )
        alerts.start()
        sip = SipDelivery(background, settings.alerts, self.clock)  # routed inbound SIP calls to tenant webhooks
        sip.start()
        ledger.observe_write = services.metrics.ledger_write.observe
        probe = asyncio.create_task(sample_relays(lambda: live.sessions, self.clock), name="voxgate-relay-probe")
        attach_services(app, services)
        try:
            yield
        finally:
            await services.live.drain(0.0, services.clock)
            await services.calls_monitor.stop()
            await alerts.stop()
            await sip.stop()
            await stop_tasks([probe], clock=self.clock)
            await services.enforcement.stop()
            # The sessions' grace is theirs; the ledger gets its own bound to flush, apart from it: a
            # grace of 0 must not mean "drop what is still queued", and a long grace must not keep a
            # pod whose Postgres is down past its termination grace (what is left is spooled).
            await ledger.stop(timeout=LEDGER_FLUSH_SECONDS)
            with contextlib.suppress(TimeoutError):  # last_used_at bookkeeping: never worth holding a shutdown
                await asyncio.wait_for(services.tenants.wait_for_key_uses(), 2.0)
            await redis.aclose()
            if replica is not None:
                await close_pool(replica)
            await close_pool(pool)
            # uvicorn may end the process by its signal right after the lifespan: export the spans now.
            await asyncio.to_thread(flush_tracing)


# How long a stopping replica lets the ledger writer flush after its sessions ended (then it spools
# the rest): the Helm chart's termination grace leaves 30 s after the drain for this and the pools.
LEDGER_FLUSH_SECONDS = 10.0

# asyncpg's `Pool.close()` waits for every acquired connection to come back; a query stuck
# on a lock or a dead peer would hold the pod in Terminating until Kubernetes kills it.
POOL_CLOSE_TIMEOUT_SECONDS = 5.0


async def close_pool(pool: asyncpg.Pool, timeout: float | None = None) -> None:
    """Close the pool gracefully, or terminate its connections after `timeout` seconds
    (default `POOL_CLOSE_TIMEOUT_SECONDS`)."""
    timeout = POOL_CLOSE_TIMEOUT_SECONDS if timeout is None else timeout
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning("Postgres connections still in use after %.0f s at shutdown: terminating them", timeout)
        pool.terminate()


async def drain(app: Litestar) -> None:
    """Stop admitting sessions; let live ones finish within the grace period; end the rest."""
    services = find_services(app)
    if services is not None:
        await services.live.drain(services.settings.server.shutdown_grace_seconds, services.clock)


def create_app(
    settings: Settings | None = None,
    prices: PriceTable | None = None,
    plugins: Sequence[PluginProtocol] = (),
    clock: Clock = SYSTEM_CLOCK,
) -> Litestar:
    """Build the gateway app. Nothing connects until the ASGI lifespan starts.

    `plugins` add routes on top of voxgate's own, e.g. `voxgate demo`'s browser page (`gateway.cli.demo_page`).
    `clock` is the one every timer of the shell uses (`GatewayServices.clock`); tests pass a fake one.
    `prices` defaults to the built-in table with `VOXGATE_PRICE_FILE` laid over it.
    """
    settings = settings or Settings.from_env()
    # Only with VOXGATE_API_DOCS=true, and only the JSON document: no HTML page, nothing from a CDN.
    openapi = (
        OpenAPIConfig(
            title="voxgate",
            version=__version__,
            path="/docs",
            components=SECURITY_COMPONENTS,
            render_plugins=[JsonRenderPlugin()],
        )
        if settings.security.api_docs
        else None
    )
    # logging_config=None: logging belongs to the process (gateway/logs.py); Litestar's default
    # would replace the root handler (and its redaction) and reset the level to INFO.
    return Litestar(
        plugins=[VoxgatePlugin(settings, prices, clock), *plugins], openapi_config=openapi, logging_config=None
    )
