"""Postgres through PgBouncer in transaction mode (`VOXGATE_DATABASE_PGBOUNCER=true`), and the read
replica the costs API reads from (`VOXGATE_DATABASE_READ_URL`).

A real PgBouncer (tests/support/pgbouncer.py) shares 4 server connections among every client pool,
so a transaction lands on whichever server connection is free: asyncpg's named prepared statements
break there (shown first), and voxgate's pools and start-up checks must not use any. The
end-to-end test runs `voxgate serve --migrate` with its pool through PgBouncer and its migrations
over a direct connection (`VOXGATE_DATABASE_MIGRATION_URL`: the advisory lock is session-scoped),
then a burst of sessions: every admission and every ledger row goes through PgBouncer.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.pools import database_pool
from gateway.settings import DatabaseSettings
from tests.conftest import PG_ADMIN_DSN, REDIS_URL
from tests.support.burst import BurstShape, run_burst
from tests.support.gateway_process import gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, gateway_settings, make_tenant, start_emulator, start_gateway
from tests.support.pgbouncer import SERVER_POOL_SIZE, pgbouncer, through

CONCURRENT = 300  # queries at once, far past the server connections PgBouncer shares


@pytest.fixture(scope="module")
def bouncer_port() -> Iterator[int]:
    with pgbouncer(PG_ADMIN_DSN) as port:
        yield port


async def _burst_of_queries(pool: asyncpg.Pool, backends: set[int] | None = None) -> list[str]:
    """CONCURRENT clients' queries at once; the server backends that answered go into `backends`."""
    errors: list[str] = []

    async def one(n: int) -> None:
        try:
            assert await pool.fetchval("SELECT $1::int + 1", n) == n + 1
            await pool.fetchval("SELECT count(*) FROM pg_class WHERE relpages > $1", n)
            if backends is not None:
                backends.add(await pool.fetchval("SELECT pg_backend_pid()"))
        except asyncpg.PostgresError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(n) for n in range(CONCURRENT)))
    return errors


async def test_without_the_setting_asyncpg_prepared_statements_break_behind_pgbouncer(
    pg_dsn: str, bouncer_port: int
) -> None:
    """Why the setting exists: a statement prepared on one server connection is executed on another."""
    pool = await database_pool(DatabaseSettings(url=through(bouncer_port, pg_dsn), pool_max=20))
    try:
        errors = await _burst_of_queries(pool)
    finally:
        await pool.close()
    assert errors and all("prepared statement" in e for e in errors), errors[:3]


async def test_with_the_setting_a_burst_of_queries_shares_the_server_connections(
    pg_dsn: str, bouncer_port: int
) -> None:
    pool = await database_pool(DatabaseSettings(url=through(bouncer_port, pg_dsn), pool_max=20, pgbouncer=True))
    try:
        backends: set[int] = set()
        assert await _burst_of_queries(pool, backends) == []
        # Each transaction went to whichever server connection was free: the 20 clients' queries
        # were answered by at most the bouncer's server pool (counted by the backends' own pids,
        # not pg_stat_activity, which also sees every other pool of the test run).
        assert 1 <= len(backends) <= SERVER_POOL_SIZE
    finally:
        await pool.close()


@pytest.fixture
async def fast_emulator():
    emulator = await start_emulator(tokens_limit=10**12, requests_limit=10**9)
    yield emulator
    await emulator.stop()


@pytest.mark.e2e
async def test_serve_through_pgbouncer_admits_a_burst_and_writes_an_exact_ledger(
    empty_pg_dsn: str, bouncer_port: int, fast_emulator, tmp_path: Path
) -> None:
    shape = BurstShape(budget_sessions=40, budget_turns=4, daily_usd="0.30", free_sessions=40, sdk_sessions=0)
    prefix = f"vgpgb:{secrets.token_hex(4)}:"
    env = gateway_env(
        through(bouncer_port, empty_pg_dsn),
        REDIS_URL,
        fast_emulator.base_url,
        prefix,
        UPSTREAM_KEY,
        VOXGATE_DATABASE_PGBOUNCER="true",
        VOXGATE_DATABASE_MIGRATION_URL=empty_pg_dsn,  # direct: the migration's advisory lock is per session
        VOXGATE_DATABASE_POOL_MAX="20",
    )
    redis = aioredis.from_url(REDIS_URL)
    direct = None
    try:
        async with gateway_process(env, tmp_path, args=["--migrate"]) as gateway:
            direct = await asyncpg.create_pool(empty_pg_dsn, min_size=1, max_size=4)  # the test's own checks
            budget, free = await make_tenant(direct, "pgb-budget"), await make_tenant(direct, "pgb-free")
            figures = await run_burst(shape, gateway, fast_emulator, direct, redis, prefix, (budget, free))
            prepared_errors = gateway.log_lines("prepared statement")
    finally:
        await redis.aclose()
        if direct is not None:
            await direct.close()
    assert prepared_errors == 0
    assert figures.refused == {} and figures.admitted == shape.sessions
    assert figures.lost == set() and figures.extra == set()
    assert figures.ledger.response_rows == len(figures.upstream.done) > 0
    assert figures.ledger.cost() == figures.upstream.cost
    assert figures.leaked_leases == 0


# -- the read replica ------------------------------------------------------------------------


@pytest.fixture
async def emulator_for_replica() -> AsyncIterator[object]:
    emulator = await start_emulator()
    yield emulator
    await emulator.stop()


async def test_reports_read_from_the_replica_pool_and_fall_back_to_the_main_one(
    pg_dsn: str, emulator_for_replica
) -> None:
    # The "replica" is the same database under another application_name, so the test can tell the pools apart.
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator_for_replica.base_url)
    replica_url = pg_dsn + ("&" if "?" in pg_dsn else "?") + "application_name=voxgate-replica"
    with_replica = replace(settings, database=replace(settings.database, read_url=replica_url))
    gateway = await start_gateway(with_replica)
    try:
        services = gateway.services
        assert services.read_pool is not services.pool
        assert await services.read_pool.fetchval("SHOW application_name") == "voxgate-replica"
        assert await services.pool.fetchval("SHOW application_name") != "voxgate-replica"
    finally:
        await gateway.stop()
    gateway = await start_gateway(settings)
    try:
        assert gateway.services.read_pool is gateway.services.pool
    finally:
        await gateway.stop()


async def test_an_unreachable_replica_does_not_stop_the_start(pg_dsn: str, emulator_for_replica) -> None:
    """The replica's pool connects on first use: a replica that is down fails the reports that read it."""
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator_for_replica.base_url)
    down = replace(settings, database=replace(settings.database, read_url="postgresql://postgres@127.0.0.1:1/x"))
    gateway = await start_gateway(down)
    try:
        with pytest.raises(OSError):
            await gateway.services.read_pool.fetchval("SELECT 1")
        assert await gateway.services.pool.fetchval("SELECT 1") == 1
    finally:
        await gateway.stop()
