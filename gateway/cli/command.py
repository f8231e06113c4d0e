"""Running an operator command (``voxgate migrate | tenant | key | policy | usage``).

Every command reads the database from ``--database-url`` or ``$VOXGATE_DATABASE_URL`` and
exits 0 on success, 1 when the request cannot be honoured (unknown tenant, duplicate name,
database unreachable) and 2 on a usage error (no or malformed database URL, bad argument).
Errors go to stderr as one line, never as a traceback.

Changes (tenant create, key create/revoke, policy set, browser-token keys) go through
`gateway.admin.changes`, as the admin API's do (SIP routing: `gateway.sip.config`), and write
the same audit rows with actor ``"cli"``; a policy change is also announced on Redis when
``$VOXGATE_REDIS_URL`` is set, so running gateways apply it to live sessions.

``--json`` output is a stable contract for scripts (`gateway.cli.output`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from gateway.livestate import LiveState
from gateway.pools import redis_client
from gateway.settings import Settings, SettingsError
from gateway.storage.migrations import MigrationError
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantDirectory, TenantDirectoryError, TenantNotFound
from gateway.tiers import PolicyFileError, check_default_tier, load_tiers

DATABASE_URL_ENV = "VOXGATE_DATABASE_URL"
CLI_ACTOR = "cli"  # the audit log's actor for changes made with this command
CONNECT_TIMEOUT_SECONDS = 10.0

Action = Callable[[argparse.Namespace, str], Coroutine[Any, Any, None]]
Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failure to report on stderr as one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def database_option() -> argparse.ArgumentParser:
    """The ``--database-url`` option every operator command takes (a parent parser)."""
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database-url", metavar="DSN", help=f"PostgreSQL DSN (default: ${DATABASE_URL_ENV})")
    return database


def common_options() -> list[argparse.ArgumentParser]:
    """``--database-url`` and ``--json`` (parent parsers)."""
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return [database_option(), as_json]


def handler(action: Action) -> Handler:
    """Wrap an async command: resolve the database, run it, turn failures into exit codes."""

    def run(args: argparse.Namespace) -> int:
        dsn = args.database_url or os.environ.get(DATABASE_URL_ENV)
        if not dsn:
            error(f"set {DATABASE_URL_ENV} (or run `voxgate demo`)")
            return 2
        try:
            asyncio.run(action(args, dsn))
        except CommandError as exc:
            error(str(exc))
            return exc.exit_code
        except (TenantDirectoryError, MigrationError) as exc:
            error(str(exc))
            return 1
        except asyncpg.UndefinedTableError:
            error("the database has no voxgate schema yet; run `voxgate migrate` first")
            return 1
        except asyncpg.PostgresError as exc:
            error(f"database error: {exc}")
            return 1
        except asyncpg.ClientConfigurationError as exc:
            error(f"invalid database URL: {exc}")
            return 2
        except BrokenPipeError:  # whoever read the output went away (`| head`): not a database problem
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 141  # as a shell reports a writer ended by SIGPIPE
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            # The DSN is not echoed: it may carry a password.
            error(f"cannot reach the database: {exc}")
            return 1
        return 0

    return run


@asynccontextmanager
async def database_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    # Behind PgBouncer in transaction mode (VOXGATE_DATABASE_PGBOUNCER) no statement may stay prepared.
    cache = 0 if os.environ.get("VOXGATE_DATABASE_PGBOUNCER", "").strip().lower() in ("1", "true", "yes", "on") else 100
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, timeout=CONNECT_TIMEOUT_SECONDS, statement_cache_size=cache
    )
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def policy_store(pool: asyncpg.Pool) -> AsyncIterator[PolicyStore]:
    """A PolicyStore over the tiers file; it publishes changes when $VOXGATE_REDIS_URL is set."""
    try:
        settings = Settings.from_env()
        tiers = load_tiers(settings.admin.policy_file)
        check_default_tier(tiers, settings.admin.default_tier, settings.admin.policy_file)
    except (SettingsError, PolicyFileError) as exc:
        raise CommandError(str(exc), exit_code=2) from None
    redis = redis_client(settings.redis) if settings.redis.url else None  # one Redis, a Cluster or Sentinel
    try:
        broadcasts = LiveState(redis, settings.redis.key_prefix, "policy-store") if redis is not None else None
        yield PolicyStore(pool, tiers, settings.admin.default_tier, broadcasts)
    finally:
        if redis is not None:
            await redis.aclose()


async def require_tenant(directory: TenantDirectory, tenant_id: str) -> None:
    if await directory.get_tenant(tenant_id) is None:
        raise TenantNotFound(f"no tenant with id {tenant_id!r}")


def error(message: str) -> None:
    print(f"voxgate: error: {message}", file=sys.stderr)
