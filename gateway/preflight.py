"""What `voxgate serve` checks before it listens, so a bad start is one line, not a traceback.

Each check raises `StartupError` whose message says what failed, where (the variable, file,
address or redacted URL) and how to fix it. Postgres and Redis are checked at the same time,
each bounded by `CONNECT_TIMEOUT_SECONDS` (connect and first query together, no retries), so a
dependency that does not answer stops the start within seconds instead of hanging it.
A database migrated by a newer voxgate whose migrations all expand is served, with one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import asyncpg
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.pools import connect_options, open_redis
from gateway.server import bind_socket
from gateway.settings import DatabaseSettings, Settings, redact_url
from gateway.storage.migrations import (
    MigrationError,
    apply_migrations,
    newer_contracts,
    newer_schema_warning,
    schema_mismatch,
    schema_version,
)

log = logging.getLogger("voxgate.preflight")

# Longest wait for Postgres or Redis to answer at start (asyncpg's own default is 60 s); with
# the interpreter's start-up it keeps a refused start under the documented 10 s.
CONNECT_TIMEOUT_SECONDS = 4.0


class StartupError(Exception):
    """`voxgate serve` cannot start; the message is the one line to print, `exit_code` the status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever a driver's message held
        self.exit_code = exit_code


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, or a StartupError naming the address (port in use, no permission...)."""
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {host}:{port} (VOXGATE_HOST / VOXGATE_PORT): {exc.strerror or exc}; "
            "stop the process that holds it or pick another port with VOXGATE_PORT or --port"
        ) from None


async def check_services(settings: Settings, required_schema: int, *, migrate: bool = False) -> None:
    """Postgres answers with the schema this build needs (after migrating, with `migrate`) or a newer
    expand-only one, and Redis answers."""
    assert settings.database.url is not None  # require_services() ran
    assert settings.redis.url is not None
    outcomes = await asyncio.gather(
        check_database(settings.database, required_schema, migrate=migrate),
        check_redis(settings.redis.url),
        return_exceptions=True,
    )
    for outcome in outcomes:  # Postgres first when both fail
        if isinstance(outcome, BaseException):
            raise outcome


async def check_database(settings: DatabaseSettings, required_schema: int, *, migrate: bool = False) -> None:
    """Connect (bounded), optionally apply pending migrations, and compare the schema version.
    Migrations run on their own direct connection (`VOXGATE_DATABASE_MIGRATION_URL`, else the main URL)."""
    assert settings.url is not None
    if migrate and settings.migration_url:
        await _connected(
            settings.migration_url, "VOXGATE_DATABASE_MIGRATION_URL", required_schema, migrate=True, compare=False
        )
        migrate = False
    await _connected(
        settings.url, "VOXGATE_DATABASE_URL", required_schema, migrate=migrate, **connect_options(settings)
    )


async def _connected(
    url: str, variable: str, required_schema: int, *, migrate: bool, compare: bool = True, **options: object
) -> None:
    """Connect to `url` (named by `variable` in errors), migrate if asked, then (with `compare`) check
    the schema version against `required_schema`."""
    where = f"Postgres at {redact_url(url)} ({variable})"
    deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT_SECONDS  # connect and query together
    try:
        async with asyncio.timeout_at(deadline):
            conn = await asyncpg.connect(url, **options)
    except TimeoutError:
        raise StartupError(
            f"{where} did not answer within {CONNECT_TIMEOUT_SECONDS:g} s; "
            "check the host and port and that the server is up"
        ) from None
    except Exception as exc:  # refused, unknown host, bad password, no such database, malformed URL
        raise StartupError(
            f"cannot connect to {where}: {_reason(exc)}; check the URL and that the server is up"
        ) from None
    try:
        if migrate:
            try:
                await apply_migrations(conn)
            except MigrationError as exc:
                raise StartupError(f"--migrate failed: {exc}") from None
            deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT_SECONDS  # migrating may take long
        async with asyncio.timeout_at(deadline):
            found = await schema_version(conn)
            contracts = await newer_contracts(conn, required_schema) if found > required_schema else []
    except TimeoutError:
        raise StartupError(f"{where} did not answer a query within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except asyncpg.PostgresError as exc:
        raise StartupError(f"{where} refused to report its schema version: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(Exception):  # the verdict is already made; a failed close changes nothing
            await conn.close(timeout=CONNECT_TIMEOUT_SECONDS)
    if not compare:
        return
    problem = schema_mismatch(found, required_schema, contracts)
    if problem is not None:
        raise StartupError(f"{where}: {problem}")
    warning = newer_schema_warning(found, required_schema)
    if warning is not None:
        log.warning("%s: %s", where, warning)


async def check_redis(url: str) -> None:
    """PING Redis with connect and reply bounded by CONNECT_TIMEOUT_SECONDS."""
    where = f"Redis at {redact_url(url)} (VOXGATE_REDIS_URL)"
    try:
        client = open_redis(
            url,
            pool_size=2,
            pool_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise StartupError(f"{where} is not a valid Redis URL: {exc}", exit_code=2) from None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            await client.ping()
    except TimeoutError:
        raise StartupError(
            f"{where} did not answer within {CONNECT_TIMEOUT_SECONDS:g} s; "
            "check the host and port and that the server is up"
        ) from None
    except Exception as exc:  # refused, auth failed, unknown host
        raise StartupError(f"cannot reach {where}: {_reason(exc)}; check the URL and that the server is up") from None
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
