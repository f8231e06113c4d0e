"""The cost rollup migrations under live traffic (docs/operations.md#upgrading).

A migration waits at most `VOXGATE_MIGRATION_LOCK_TIMEOUT` for a table lock and then fails,
rolled back, with a message to run it again; 0018 (the slim 15-minute rollup) locks only
cost_rollup_15m, never the usage tables, and counts every line once when ledger writes race it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.ledger.records import LedgerRecord
from gateway.storage.migrations import LOCK_TIMEOUT_ENV, MigrationError, apply_migrations, default_migrations_dir
from tests.conftest import create_database, drop_database
from tests.support import ledger_fill
from tests.support.harness import make_tenant
from tests.test_costs_live import TOTAL, live_records

SLIM = "0018_cost_rollup_15m_slim.sql"
USAGE_TABLES = "usage_ledger, transcription_usage, duration_usage, live_token_usage"
BY_SLIM_KEY = """
SELECT tenant_id, bucket_start, model, line_item, sum(quantity)::bigint AS q, sum(amount_micro_usd)::bigint AS a
FROM {table} GROUP BY 1, 2, 3, 4
"""


def migrations_through(tmp_path: Path, last: str, *, include_last: bool) -> Path:
    directory = tmp_path / ("through" if include_last else "before")
    directory.mkdir()
    for path in default_migrations_dir().glob("*.sql"):
        if path.name < last or (include_last and path.name == last):
            shutil.copy(path, directory / path.name)
    return directory


@pytest.fixture
async def before_slim(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A database migrated up to (not including) 0018, and a directory ending with 0018."""
    name, dsn = await create_database()
    assert SLIM not in await apply_migrations(dsn, migrations_through(tmp_path, SLIM, include_last=False))
    yield dsn, migrations_through(tmp_path, SLIM, include_last=True)
    await drop_database(name)


async def book(conn: asyncpg.Connection, records: list[LedgerRecord]) -> None:
    work = sorted((stmt for r in records for stmt in ledger_fill.statements(r)), key=lambda s: ledger_fill.PHASE[s[0]])
    for query, args in work:
        await conn.execute(query, *args)


async def test_a_migration_waiting_for_a_lock_gives_up_with_retry_guidance(
    before_slim: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, through_slim = before_slim
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0.3")
    writer = await asyncpg.connect(dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("LOCK TABLE cost_rollup_15m IN ROW EXCLUSIVE MODE")  # a ledger write in flight
        with pytest.raises(MigrationError) as caught:
            await asyncio.wait_for(apply_migrations(dsn, through_slim), timeout=30)
        message = str(caught.value)
        assert SLIM in message and "run `voxgate migrate` again" in message and LOCK_TIMEOUT_ENV in message
        assert "\n" not in message
        assert await writer.fetchval("SELECT to_regclass('cost_rollup_15m_slim')") is None  # rolled back
        await tx.rollback()
    finally:
        await writer.close()
    assert await apply_migrations(dsn, through_slim) == [SLIM]  # and the retry goes through


async def test_the_slim_rollup_migration_does_not_lock_the_usage_tables(
    before_slim: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, through_slim = before_slim
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "0.5")
    writer = await asyncpg.connect(dsn)
    try:
        async with writer.transaction():
            await writer.execute(f"LOCK TABLE {USAGE_TABLES} IN ROW EXCLUSIVE MODE")  # writers mid-transaction
            assert await asyncio.wait_for(apply_migrations(dsn, through_slim), timeout=30) == [SLIM]
    finally:
        await writer.close()


async def test_ledger_writes_racing_the_slim_migration_are_counted_once(before_slim: tuple[str, Path]) -> None:
    dsn, through_slim = before_slim
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    try:
        tenant = await make_tenant(pool, "costs-slim-race")
        t, key = tenant.tenant_id, tenant.key_id
        await ledger_fill.write(pool, live_records(t, key, session="vgs_before"))  # committed before
        async with pool.acquire() as first:
            tx = first.transaction()
            await tx.start()
            await book(first, live_records(t, key, session="vgs_during"))  # in flight: holds cost_rollup_15m
            migrating = asyncio.ensure_future(apply_migrations(dsn, through_slim))
            await asyncio.sleep(0.5)  # the migration now waits for that writer
            after = asyncio.ensure_future(ledger_fill.write(pool, live_records(t, key, session="vgs_after")))
            await asyncio.sleep(0.5)  # and this writer waits behind the migration
            assert not migrating.done() and not after.done()
            await tx.commit()
        assert await asyncio.wait_for(migrating, timeout=30) == [SLIM]
        await asyncio.wait_for(after, timeout=30)
        await ledger_fill.write(pool, live_records(t, key, session="vgs_later"))  # through the new triggers

        fine = {tuple(r)[:4]: tuple(r)[4:] for r in await pool.fetch(BY_SLIM_KEY.format(table="cost_rollup_15m"))}
        slim = {tuple(r)[:4]: tuple(r)[4:] for r in await pool.fetch(BY_SLIM_KEY.format(table="cost_rollup_15m_slim"))}
        assert slim == fine
        assert sum(a for _, a in slim.values()) == 4 * TOTAL  # four sessions' worth, each once
    finally:
        await pool.close()
