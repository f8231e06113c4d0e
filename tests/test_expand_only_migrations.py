"""Every shipped migration only expands the schema, so old pods keep working on it (a rollout, a
`helm rollback`); a migration that must contract carries `-- voxgate: contract`, which the runner
records so older releases refuse that database instead of running on it."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from gateway.storage.migration_safety import destructive_statements, is_contract
from gateway.storage.migrations import apply_migrations, newer_contracts

# The repository's files, read by path (not through the runner under test).
MIGRATION_FILES = sorted((Path(__file__).parents[1] / "migrations").glob("*.sql"))


def test_the_repository_has_migrations_to_check() -> None:
    assert len(MIGRATION_FILES) >= 6


@pytest.mark.parametrize("path", MIGRATION_FILES, ids=lambda p: p.name)
def test_every_shipped_migration_only_expands_unless_marked_as_a_contract(path: Path) -> None:
    sql = path.read_text()
    if is_contract(sql):
        pytest.skip(f"{path.name} is marked `-- voxgate: contract`: older releases refuse a schema past it")
    assert destructive_statements(sql) == [], (
        f"{path.name} would break the release before it during a rollout or after a rollback; expand instead "
        "(add, never drop/rename/retype; new NOT NULL columns need a DEFAULT), or mark it `-- voxgate: contract` "
        "and ship it one release after the code stopped using what it removes"
    )


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE tenants;", "DROP TABLE"),
        ("drop table if exists old_things cascade;", "DROP TABLE"),
        ("ALTER TABLE tenants DROP COLUMN tier;", "DROP COLUMN"),
        ("ALTER TABLE tenants DROP tier;", "DROP COLUMN"),  # PostgreSQL's COLUMN keyword is optional
        ("ALTER TABLE tenants RENAME COLUMN tier TO plan;", "RENAME"),
        ("ALTER TABLE tenants RENAME TO customers;", "RENAME"),
        ("ALTER TABLE usage_ledger ALTER COLUMN cost_micro_usd TYPE numeric;", "TYPE"),
        ("ALTER TABLE usage_ledger ALTER COLUMN cost_micro_usd SET DATA TYPE numeric;", "TYPE"),
        ("ALTER TABLE tenants ALTER COLUMN tier SET NOT NULL;", "SET NOT NULL"),
        ("ALTER TABLE tenants ADD COLUMN region text NOT NULL;", "NOT NULL without a DEFAULT"),
        ("ALTER TABLE tenants ADD COLUMN a text, ADD COLUMN b int NOT NULL;", "ADD COLUMN B NOT NULL"),
        ("DROP VIEW tenant_costs;", "DROP VIEW"),
    ],
)
def test_destructive_statements_are_found(sql: str, reason: str) -> None:
    found = destructive_statements(sql)
    assert len(found) == 1 and reason in found[0], found


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t (id text PRIMARY KEY, n bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());",
        "ALTER TABLE tenants ADD COLUMN region text;",
        "ALTER TABLE tenants ADD COLUMN region text NOT NULL DEFAULT 'eu';",
        "ALTER TABLE tenants ADD COLUMN IF NOT EXISTS n integer NOT NULL DEFAULT 0, ADD COLUMN note text;",
        "ALTER TABLE t ADD CONSTRAINT pair CHECK ((a IS NULL) = (b IS NULL));",
        "ALTER TABLE t ALTER COLUMN a DROP NOT NULL, ALTER COLUMN b DROP DEFAULT, DROP CONSTRAINT pair;",
        "CREATE INDEX CONCURRENTLY_NOT ON t (a);",
        "UPDATE tenants SET tier = 'standard' WHERE tier IS NULL;",
        # added here, filled, given a default, then made mandatory: older code never writes it (0004)
        "ALTER TABLE t ADD COLUMN created_at timestamptz; UPDATE t SET created_at = updated_at;\n"
        "ALTER TABLE t ALTER COLUMN created_at SET DEFAULT now(); ALTER TABLE t ALTER COLUMN created_at SET NOT NULL;",
        "-- we used to DROP TABLE here\nCREATE TABLE u (id int);",
        "/* RENAME later */ INSERT INTO audit_log (actor, action) VALUES ('x', 'DROP TABLE tenants');",
    ],
)
def test_expanding_statements_pass(sql: str) -> None:
    assert destructive_statements(sql) == []


def test_the_contract_marker_is_a_comment_line_of_its_own() -> None:
    assert is_contract("-- voxgate: contract\nALTER TABLE t DROP COLUMN c;")
    assert is_contract("-- Drop the old column.\n--voxgate:contract\nALTER TABLE t DROP COLUMN c;")
    assert not is_contract("-- not a voxgate: contract migration\nCREATE TABLE t (id int);")
    assert not is_contract("CREATE TABLE t (id int); -- voxgate: contract is only a marker on its own line")


async def test_the_runner_records_which_migrations_contract(empty_pg_dsn: str, tmp_path: Path) -> None:
    files = {
        "0001_make.sql": "CREATE TABLE things (id int PRIMARY KEY, old text);",
        "0002_more.sql": "ALTER TABLE things ADD COLUMN new text;",
        "0003_drop_old.sql": "-- voxgate: contract\nALTER TABLE things DROP COLUMN old;",
    }
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    await apply_migrations(empty_pg_dsn, tmp_path)
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        rows = await conn.fetch("SELECT name, expand_only FROM schema_migrations ORDER BY version")
        assert [(r["name"], r["expand_only"]) for r in rows] == [
            ("0001_make.sql", True),
            ("0002_more.sql", True),
            ("0003_drop_old.sql", False),
        ]
        assert await newer_contracts(conn, 1) == ["0003_drop_old.sql"]  # a release at 1 or 2 must refuse
        assert await newer_contracts(conn, 3) == []
    finally:
        await conn.close()
