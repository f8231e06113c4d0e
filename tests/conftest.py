"""Shared fixtures: a throwaway Postgres database and Redis keyspace per test session.

Tests talk to the real services on this machine (see ../shared/TOOLING.md):
VOXGATE_TEST_PG_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres)
and VOXGATE_TEST_REDIS_URL (default redis://127.0.0.1:6379).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.storage.migrations import apply_migrations

PG_ADMIN_DSN = os.environ.get("VOXGATE_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VOXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _dsn_for(database: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def create_database() -> tuple[str, str]:
    """Create an empty database with a random name; returns (name, dsn)."""
    name = f"voxgate_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, _dsn_for(name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_dsn() -> AsyncIterator[str]:
    """A migrated database shared by the whole test session."""
    name, dsn = await create_database()
    await apply_migrations(dsn)
    yield dsn
    await drop_database(name)


@pytest.fixture
async def empty_pg_dsn() -> AsyncIterator[str]:
    """A fresh, unmigrated database for one test."""
    name, dsn = await create_database()
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
async def pg_pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"vgtest:{secrets.token_hex(4)}:"


@pytest.fixture(scope="session")
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    async for key in client.scan_iter(match=f"{redis_prefix}*"):
        await client.delete(key)
    await client.aclose()
