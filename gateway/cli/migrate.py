"""``voxgate migrate``: apply the pending database migrations."""

from __future__ import annotations

import argparse

import asyncpg

from gateway.cli.command import CONNECT_TIMEOUT_SECONDS, common_options, handler
from gateway.cli.output import print_json
from gateway.storage.migrations import apply_migrations, schema_version


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = subparsers.add_parser("migrate", parents=common_options(), help="apply pending database migrations")
    migrate.set_defaults(handler=handler(_migrate))


async def _migrate(args: argparse.Namespace, dsn: str) -> None:
    """Apply pending migrations.

    JSON: ``{"applied": ["0002_x.sql", ...], "schema_version": 2}``.
    """
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
