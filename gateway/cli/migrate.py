"""``voxgate migrate``: apply the pending database migrations.

The run holds a session-level advisory lock, so it needs a direct connection to Postgres:
``$VOXGATE_DATABASE_MIGRATION_URL`` when set (e.g. when ``$VOXGATE_DATABASE_URL`` goes through
PgBouncer in transaction mode), else the usual database URL. ``--database-url`` wins over both.
"""

from __future__ import annotations

import argparse
import os

import asyncpg

from gateway.cli.command import CONNECT_TIMEOUT_SECONDS, common_options, handler
from gateway.cli.output import print_json
from gateway.storage.migrations import apply_migrations, schema_version

MIGRATION_URL_ENV = "VOXGATE_DATABASE_MIGRATION_URL"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = subparsers.add_parser("migrate", parents=common_options(), help="apply pending database migrations")
    migrate.set_defaults(handler=handler(_migrate))


async def _migrate(args: argparse.Namespace, dsn: str) -> None:
    """Apply pending migrations.

    JSON: ``{"applied": ["0002_x.sql", ...], "schema_version": 2}``.
    """
    if not args.database_url:
        dsn = os.environ.get(MIGRATION_URL_ENV) or dsn
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        applied = await apply_migrations(conn)
        version = await schema_version(conn)
    finally:
        await conn.close()
    if args.json:
        print_json({"applied": applied, "schema_version": version})
        return
    for name in applied:
        print(f"applied {name}")
    print(f"schema is at version {version}" + ("" if applied else " (nothing to do)"))
