"""The migration runner: numbered files, checksums, one advisory lock, one transaction per file."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from gateway.ledger.sql import TRANSCRIPTION_COLUMNS, USAGE_COLUMNS
from gateway.storage.migrations import (
    MigrationError,
    apply_migrations,
    default_migrations_dir,
    discover_migrations,
    required_schema_version,
    schema_version,
    shipped_migrations_dir,
)

SCHEMA_TABLES = {
    "schema_migrations",
    "tenants",
    "api_keys",
    "realtime_sessions",
    "usage_ledger",
    "transcription_usage",
    "rate_limit_snapshots",
}


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def table_names(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def applied_rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY 1"
        )
        return rows
    finally:
        await conn.close()


async def test_fresh_database_gets_every_table(empty_pg_dsn: str) -> None:
    applied = await apply_migrations(empty_pg_dsn)

    assert applied == [m.name for m in discover_migrations()]
    assert applied[0] == "0001_initial.sql"
    assert await table_names(empty_pg_dsn) >= SCHEMA_TABLES
    rows = await applied_rows(empty_pg_dsn)
    assert [row["name"] for row in rows] == applied
    assert all(len(row["checksum"]) == 64 for row in rows)


async def test_the_billed_tables_have_exactly_the_columns_of_their_records(empty_pg_dsn: str) -> None:
    # The ledger writes and reports derive their column lists from UsageRecord and
    # TranscriptionRecord; a migration that adds, drops or renames a billed column must change
    # the record too (recorded_at is the database's own: it defaults to now()).
    await apply_migrations(empty_pg_dsn)
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        for table, columns in (("usage_ledger", USAGE_COLUMNS), ("transcription_usage", TRANSCRIPTION_COLUMNS)):
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
                table,
            )
            assert {row["column_name"] for row in rows} == {*columns, "recorded_at"}, table
    finally:
        await conn.close()


async def test_second_run_is_a_no_op(empty_pg_dsn: str) -> None:
    await apply_migrations(empty_pg_dsn)
    before = await applied_rows(empty_pg_dsn)

    assert await apply_migrations(empty_pg_dsn) == []
    assert await applied_rows(empty_pg_dsn) == before


async def test_schema_version_tracks_the_highest_applied_file(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a ()", "0007_b.sql": "CREATE TABLE b ()"})
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        assert await schema_version(conn) == 0
        assert await apply_migrations(conn, directory) == ["0001_a.sql", "0007_b.sql"]
        assert await schema_version(conn) == 7
    finally:
        await conn.close()
    assert required_schema_version(directory) == 7


async def test_edited_applied_migration_is_refused_by_name(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), directory)
    await apply_migrations(empty_pg_dsn, directory)

    with (directory / "0001_initial.sql").open("a") as sql:
        sql.write("\n-- an innocent-looking edit\n")

    with pytest.raises(MigrationError, match=r"0001_initial\.sql.*edited"):
        await apply_migrations(empty_pg_dsn, directory)


async def test_applied_migration_missing_on_disk_is_refused(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a ()", "0002_b.sql": "CREATE TABLE b ()"})
    await apply_migrations(empty_pg_dsn, directory)
    (directory / "0002_b.sql").unlink()

    with pytest.raises(MigrationError, match=r"0002_b\.sql.*missing"):
        await apply_migrations(empty_pg_dsn, directory)


async def test_file_numbered_below_applied_history_is_refused(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a ()", "0003_c.sql": "CREATE TABLE c ()"})
    await apply_migrations(empty_pg_dsn, directory)
    write_migrations(directory, {"0002_b.sql": "CREATE TABLE b ()"})

    with pytest.raises(MigrationError, match=r"0002_b\.sql"):
        await apply_migrations(empty_pg_dsn, directory)
    assert "b" not in await table_names(empty_pg_dsn)


async def test_concurrent_runners_apply_each_file_once(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path,
        {
            "0001_a.sql": "CREATE TABLE a (id int)",
            # Slow enough that the second runner is certainly waiting on the lock meanwhile.
            "0002_slow.sql": "SELECT pg_sleep(0.3); CREATE TABLE slow (id int)",
            "0003_c.sql": "INSERT INTO a VALUES (1)",
        },
    )
    first, second = await asyncpg.connect(empty_pg_dsn), await asyncpg.connect(empty_pg_dsn)
    try:
        results = await asyncio.gather(apply_migrations(first, directory), apply_migrations(second, directory))
    finally:
        await first.close()
        await second.close()

    assert sorted(results, key=len) == [[], ["0001_a.sql", "0002_slow.sql", "0003_c.sql"]]
    assert [row["version"] for row in await applied_rows(empty_pg_dsn)] == [1, 2, 3]
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM a") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "bad_name",
    ["1_initial.sql", "0002_Add_Index.sql", "0002-add-index.sql", "0002_add_index.SQL", "README.md"],
)
async def test_badly_named_file_is_rejected_before_touching_the_database(
    empty_pg_dsn: str, tmp_path: Path, bad_name: str
) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a ()", bad_name: "SELECT 1"})

    with pytest.raises(MigrationError, match=bad_name.replace(".", r"\.")):
        await apply_migrations(empty_pg_dsn, directory)
    assert await table_names(empty_pg_dsn) == set()


async def test_duplicate_numbers_are_rejected(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a ()", "0001_b.sql": "SELECT 1"})

    with pytest.raises(MigrationError, match=r"0001.*0001_a\.sql.*0001_b\.sql"):
        await apply_migrations(empty_pg_dsn, directory)


async def test_failing_file_rolls_back_alone(empty_pg_dsn: str, tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path,
        {
            "0001_good.sql": "CREATE TABLE good (id int)",
            "0002_bad.sql": "CREATE TABLE half (id int); SELECT no_such_column FROM good;",
            "0003_later.sql": "CREATE TABLE later (id int)",
        },
    )

    with pytest.raises(MigrationError, match=r"0002_bad\.sql.*rolled back"):
        await apply_migrations(empty_pg_dsn, directory)

    tables = await table_names(empty_pg_dsn)
    assert "good" in tables
    assert not tables & {"half", "later"}
    assert [row["name"] for row in await applied_rows(empty_pg_dsn)] == ["0001_good.sql"]

    # The lock was released and the run resumes once the file is fixed.
    (directory / "0002_bad.sql").write_text("CREATE TABLE half (id int)")
    assert await apply_migrations(empty_pg_dsn, directory) == ["0002_bad.sql", "0003_later.sql"]


async def test_directory_comes_from_the_environment(
    empty_pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_migrations(tmp_path, {"0001_only.sql": "CREATE TABLE only_one ()"})
    monkeypatch.setenv("VOXGATE_MIGRATIONS_DIR", str(tmp_path))

    assert default_migrations_dir() == tmp_path
    assert await apply_migrations(empty_pg_dsn) == ["0001_only.sql"]


async def test_missing_directory_is_an_error(empty_pg_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        await apply_migrations(empty_pg_dsn, tmp_path / "nowhere")


def test_the_build_requires_the_newest_migration_it_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.app import REQUIRED_SCHEMA_VERSION

    files = sorted((Path(__file__).parents[1] / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert int(files[-1].name[:4]) == REQUIRED_SCHEMA_VERSION
    # A migrations directory chosen for `voxgate migrate` never changes what the build needs.
    write_migrations(tmp_path, {"0001_only.sql": "SELECT 1"})
    monkeypatch.setenv("VOXGATE_MIGRATIONS_DIR", str(tmp_path))
    assert required_schema_version() == REQUIRED_SCHEMA_VERSION


def test_the_migrations_are_a_package_the_wheel_ships() -> None:
    import migrations

    assert shipped_migrations_dir() == Path(migrations.__file__).parent
    assert shipped_migrations_dir() == Path(__file__).parents[1] / "migrations"
    # The package's own files are not migrations, and are not "unexpected entries" either.
    names = [m.name for m in discover_migrations(shipped_migrations_dir())]
    assert names == sorted(p.name for p in shipped_migrations_dir().glob("*.sql"))


def test_package_files_are_skipped_but_anything_else_still_refused(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path, {"0001_a.sql": "SELECT 1", "__init__.py": '"""docs"""\n'})
    (directory / "__pycache__").mkdir()
    assert [m.name for m in discover_migrations(directory)] == ["0001_a.sql"]

    write_migrations(directory, {"helpers.py": ""})
    with pytest.raises(MigrationError, match=r"helpers\.py"):
        discover_migrations(directory)


async def test_browser_auth_keeps_a_previous_secret_only_with_its_window(empty_pg_dsn: str) -> None:
    await apply_migrations(empty_pg_dsn)
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('ten_m5', 'm5')")
        insert = (
            "INSERT INTO tenant_browser_auth (tenant_id, hs256_secret, hs256_previous_secret, "
            "hs256_previous_until) VALUES ('ten_m5', $1, $2, $3)"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "n" * 40, "p" * 40, None)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "n" * 40, None, datetime.now(UTC))
        await conn.execute(insert, "n" * 40, "p" * 40, datetime.now(UTC))
        assert await conn.fetchval("SELECT count(*) FROM tenant_browser_auth") == 1
    finally:
        await conn.close()
