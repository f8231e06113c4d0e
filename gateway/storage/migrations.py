"""Forward-only SQL migrations: numbered files, a checksum per file, one advisory lock per run.

Rules the runner enforces:

* The directory holds only files named ``NNNN_name.sql`` (four digits, lower-case snake
  case), with no number used twice. Anything else there is an error, so a typo never
  silently skips a migration.
* ``schema_migrations`` records every applied file with the SHA-256 of its bytes. Editing a
  file after it was applied, or deleting/renaming it, is an error: ship a new file instead.
* Each file runs in its own transaction together with its ``schema_migrations`` row, so a
  failing file leaves the database exactly as the previous file left it. A consequence:
  statements that refuse to run inside a transaction (``CREATE INDEX CONCURRENTLY``,
  ``VACUUM``) cannot be used in a migration file.
* Each file waits at most ``$VOXGATE_MIGRATION_LOCK_TIMEOUT`` seconds (default 10) for a table
  lock (``SET LOCAL lock_timeout``); past it the file is rolled back with a message to run again.
* The whole run holds a session-level ``pg_advisory_lock(ADVISORY_LOCK_KEY)`` on one
  connection. A second runner (another pod, a Helm hook racing an init container) blocks
  until the first finishes, then finds nothing left to do.

The SQL files live in the top-level ``migrations`` package, which the wheel ships as package
data, so an installed voxgate migrates with no checkout at hand. ``$VOXGATE_MIGRATIONS_DIR``,
when set, replaces that directory for ``voxgate migrate``. What the build *needs*
(``required_schema_version``) always comes from the shipped files: ``voxgate serve`` refuses a
database below it (run ``voxgate migrate``). A database above it (a newer voxgate migrated it:
a rolling upgrade, or a rollback) is served with a warning when every newer migration is
expand-only, and refused when one of them is marked ``-- voxgate: contract``
(``gateway/storage/migration_safety.py``); ``schema_migrations.expand_only`` records which.

The advisory lock is session-scoped, so migrations need a direct connection to Postgres, not
one through PgBouncer in transaction mode: ``VOXGATE_DATABASE_MIGRATION_URL`` when set.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import asyncpg

from gateway.storage import queries
from gateway.storage.migration_safety import is_contract

#: Key for ``pg_advisory_lock``: the ASCII bytes of "voxgate" read as one big-endian integer
#: (0x766F7867617465). Fixed forever, so every version of voxgate serialises on it.
ADVISORY_LOCK_KEY = 0x766F7867617465

MIGRATIONS_DIR_ENV = "VOXGATE_MIGRATIONS_DIR"
#: How long one migration may wait for a table lock (seconds) before it fails, rolled back, so a
#: long-running writer never queues the gateway's writes behind a waiting migration for longer.
LOCK_TIMEOUT_ENV = "VOXGATE_MIGRATION_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 10.0
MIGRATIONS_PACKAGE = "migrations"  # the top-level package holding the SQL files (package data in the wheel)

# What makes the directory a Python package; not migrations, so never an "unexpected entry".
_PACKAGE_ENTRIES = frozenset({"__init__.py", "__pycache__"})

_FILE_NAME = re.compile(r"(?P<version>\d{4})_[a-z0-9_]+\.sql")


class MigrationError(Exception):
    """The migration directory or the recorded history is inconsistent, or a file failed."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file as found on disk."""

    version: int
    name: str  # the file name, e.g. "0001_initial.sql"
    sql: str
    checksum: str  # hex SHA-256 of the file's bytes


def shipped_migrations_dir() -> Path:
    """The directory of the ``migrations`` package this voxgate was built with."""
    try:
        root = resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError:
        # An editable install made before migrations/ became a package does not map it; the
        # folder still sits beside gateway/ in that checkout. A wheel without it fails below.
        return Path(__file__).resolve().parents[2] / MIGRATIONS_PACKAGE
    if not isinstance(root, Path):  # e.g. a zip import: the runner reads plain files
        raise MigrationError(f"the migrations package is not on the file system ({root}); set {MIGRATIONS_DIR_ENV}")
    return root


def default_migrations_dir() -> Path:
    """``$VOXGATE_MIGRATIONS_DIR`` if set, else the shipped ``migrations`` package's directory."""
    configured = os.environ.get(MIGRATIONS_DIR_ENV)
    if configured:
        return Path(configured)
    return shipped_migrations_dir()


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    """Read and validate every migration file in ``directory``, ordered by version."""
    directory = default_migrations_dir() if directory is None else directory
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {str(directory)!r} does not exist")
    by_version: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.name in _PACKAGE_ENTRIES:
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if match is None or not path.is_file():
            raise MigrationError(
                f"unexpected entry {path.name!r} in {str(directory)!r}: "
                "migration files must be named NNNN_lower_snake_name.sql"
            )
        version = int(match["version"])
        if version in by_version:
            raise MigrationError(
                f"migration number {version:04d} is used by both {by_version[version].name!r} and {path.name!r}"
            )
        raw = path.read_bytes()
        by_version[version] = Migration(
            version=version,
            name=path.name,
            sql=raw.decode("utf-8"),
            checksum=hashlib.sha256(raw).hexdigest(),
        )
    return [by_version[v] for v in sorted(by_version)]


def required_schema_version(directory: Path | None = None) -> int:
    """The highest migration number in ``directory`` (default: the shipped migrations, never
    ``$VOXGATE_MIGRATIONS_DIR``): the schema version this build needs the database to be at."""
    if directory is None:
        return _shipped_schema_version()
    found = discover_migrations(directory)
    return found[-1].version if found else 0


@cache
def _shipped_schema_version() -> int:
    # The shipped files do not change while the process runs; read them once.
    found = discover_migrations(shipped_migrations_dir())
    return found[-1].version if found else 0


async def apply_migrations(target: str | asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply every pending migration; return the file names applied by this call.

    ``target`` is a DSN (a connection is opened and closed here) or an open connection,
    which must not be inside a transaction. Raises ``MigrationError`` on a bad directory,
    an edited or missing applied file, or a file whose SQL fails.
    """
    # Validate the files before touching the database: a bad directory should not even lock.
    on_disk = discover_migrations(directory)
    if isinstance(target, str):
        conn = await asyncpg.connect(target)
        try:
            return await _apply_locked(conn, on_disk)
        finally:
            await conn.close()
    return await _apply_locked(target, on_disk)


async def schema_version(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Highest applied migration number; 0 for a database never migrated."""
    if await conn.fetchval(queries.SCHEMA_MIGRATIONS_EXISTS) is None:
        return 0
    version = await conn.fetchval(queries.SCHEMA_VERSION)
    return int(version or 0)


async def _apply_locked(conn: asyncpg.Connection, on_disk: list[Migration]) -> list[str]:
    await conn.execute(queries.ADVISORY_LOCK, ADVISORY_LOCK_KEY)
    try:
        # Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide.
        await conn.execute(queries.CREATE_SCHEMA_MIGRATIONS)
        await conn.execute(queries.ADD_EXPAND_ONLY_COLUMN)
        applied = {row["version"]: row for row in await conn.fetch(queries.APPLIED_MIGRATIONS)}
        _check_history(applied, on_disk)
        done: list[str] = []
        for migration in on_disk:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{_lock_timeout_ms()}ms'")
                    await conn.execute(migration.sql)
                    await conn.execute(
                        queries.RECORD_MIGRATION,
                        migration.version,
                        migration.name,
                        migration.checksum,
                        not is_contract(migration.sql),
                    )
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
                raise MigrationError(
                    f"migration {migration.name} could not lock a table it changes ({exc}) and was rolled back; "
                    f"nothing is lost: run `voxgate migrate` again (a quieter moment, or a longer {LOCK_TIMEOUT_ENV})"
                ) from exc
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed and was rolled back: {exc}") from exc
            done.append(migration.name)
        return done
    finally:
        # A dead connection already released its session lock; do not mask the real error.
        if not conn.is_closed():
            await conn.execute(queries.ADVISORY_UNLOCK, ADVISORY_LOCK_KEY)


def _lock_timeout_ms() -> int:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        raise MigrationError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, not {raw!r}") from None
    if not seconds > 0:
        raise MigrationError(f"{LOCK_TIMEOUT_ENV} must be a positive number of seconds, not {raw!r}")
    return max(1, round(seconds * 1000))


def _check_history(applied: dict[int, asyncpg.Record], on_disk: list[Migration]) -> None:
    files = {m.version: m for m in on_disk}
    latest = max(applied, default=0)
    late = [m.name for m in on_disk if m.version < latest and m.version not in applied]
    if late:
        # Usually a merge that numbered a file below one already shipped: renumber it.
        raise MigrationError(
            f"migration {late[0]} is numbered below the latest applied version {latest:04d}; "
            "migrations only move forward, so give it a higher number"
        )
    for version, row in sorted(applied.items()):
        migration = files.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {row['name']} (version {version:04d}) is applied in the database "
                "but missing from the migrations directory"
            )
        if migration.name != row["name"]:
            raise MigrationError(
                f"migration {version:04d} was applied as {row['name']} but is now named {migration.name}"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {migration.name} was edited after it was applied "
                f"(checksum {row['checksum'][:12]}… is now {migration.checksum[:12]}…); "
                "add a new migration instead"
            )


async def newer_contracts(conn: asyncpg.Connection, required: int) -> list[str] | None:
    """The migrations above version `required` marked as contracting (an older voxgate cannot run on
    them), or None when the database does not say (no runner of this kind migrated it)."""
    if not await conn.fetchval(queries.EXPAND_ONLY_COLUMN_EXISTS):
        return None
    return [str(row["name"]) for row in await conn.fetch(queries.CONTRACTS_AFTER, required)]


def schema_mismatch(found: int, required: int, contracts: list[str] | None = None) -> str | None:
    """Why a database at schema version ``found`` cannot be served by a build that needs
    ``required`` (with the command that fixes it), or None when it can. A newer schema can be
    served when ``contracts`` (from `newer_contracts`) is known and empty: it only expanded."""
    if found < required:
        return f"the database schema is at version {found}, this voxgate needs {required}: run `voxgate migrate`"
    if found > required and contracts != []:
        why = (
            f"migration {contracts[0]} contracts the schema (marked `-- voxgate: contract`)"
            if contracts
            else "the database does not record which migrations are expand-only"
        )
        return (
            f"the database schema is at version {found}, newer than this voxgate knows ({required}), and {why}: "
            "a newer voxgate migrated it and migrations only move forward; upgrade voxgate to that release"
        )
    return None


def newer_schema_warning(found: int, required: int) -> str | None:
    """What `serve` logs when it runs on a newer, expand-only schema (a rollout or a rollback), else None."""
    if found <= required:
        return None
    return (
        f"the database schema is at version {found}, newer than this voxgate knows ({required}); "
        "every newer migration is expand-only, so this version runs on it (a rollout in progress or a rollback); "
        "upgrade voxgate to that release when you can"
    )
