"""Tenants and API keys: creation, secret handling, authentication and isolation."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import websockets

from gateway.auth.apikeys import (
    SECRET_LENGTH,
    generate_api_key,
    hash_api_key,
    looks_like_api_key,
    new_key_id,
)
from gateway.storage.tenants import (
    KEY_USE_WRITE_INTERVAL_S,
    IssuedKey,
    KeyIdentity,
    Tenant,
    TenantDirectory,
    TenantExists,
    TenantNotFound,
)
from tests.support.clock import FakeClock
from tests.support.harness import make_tenant
from tests.support.tcp_proxy import TcpProxy


def unique_name(label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}"


@pytest.fixture
async def directory(pg_pool: asyncpg.Pool) -> AsyncIterator[TenantDirectory]:
    directory = TenantDirectory(pg_pool)
    yield directory
    await directory.wait_for_key_uses()


@pytest.fixture
async def tenant(directory: TenantDirectory) -> Tenant:
    return await directory.create_tenant(unique_name("acme"))


# --- secrets, pure --------------------------------------------------------------------------


def test_secret_has_the_documented_shape_and_256_random_bits() -> None:
    key = generate_api_key()

    assert key.secret.startswith("vg_live_")
    assert len(key.secret) == SECRET_LENGTH == 8 + 43
    random_part = key.secret.removeprefix("vg_live_")
    assert len(base64.urlsafe_b64decode(random_part + "=")) == 32
    assert key.prefix == key.secret[:12]
    assert key.key_hash == hashlib.sha256(key.secret.encode()).digest() == hash_api_key(key.secret)


def test_secrets_do_not_repeat() -> None:
    assert len({generate_api_key().secret for _ in range(2000)}) == 2000


def test_secret_is_not_in_the_repr() -> None:
    key = generate_api_key()
    assert key.secret not in repr(key)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "vg_live_",
        "sk-proj-" + "a" * 43,
        "vg_test_" + "a" * 43,
        "vg_live_" + "a" * 42,
        "vg_live_" + "a" * 44,
        "vg_live_" + "a" * 42 + "+",
        "vg_live_" + "a" * 42 + "\n",
        "vg_live_" + "a" * 42 + "é",
        "x" * 100_000,
        None,
        b"vg_live_" + b"a" * 43,
    ],
)
def test_format_check_rejects_garbage(candidate: object) -> None:
    assert not looks_like_api_key(candidate)


def test_format_check_accepts_real_secrets() -> None:
    assert all(looks_like_api_key(generate_api_key().secret) for _ in range(200))


def test_key_ids_are_public_and_typed() -> None:
    key_id = new_key_id()
    assert key_id.startswith("key_")
    assert len(key_id) == 4 + 16


# --- tenants --------------------------------------------------------------------------------


async def test_create_list_and_get_tenant(directory: TenantDirectory) -> None:
    name = unique_name("globex")
    created = await directory.create_tenant(name)

    assert created.id.startswith("ten_")
    assert created.name == name
    assert not created.disabled
    assert created in await directory.list_tenants()
    assert await directory.get_tenant(created.id) == created
    assert await directory.get_tenant("ten_doesnotexist") is None


async def test_duplicate_tenant_name_is_refused(directory: TenantDirectory, tenant: Tenant) -> None:
    with pytest.raises(TenantExists, match=tenant.name):
        await directory.create_tenant(tenant.name)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
async def test_blank_or_huge_tenant_name_is_refused(directory: TenantDirectory, name: str) -> None:
    with pytest.raises(ValueError, match="tenant name"):
        await directory.create_tenant(name)


# --- keys -----------------------------------------------------------------------------------


async def test_issued_key_is_listed_without_its_secret(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id, name="staging")

    assert issued.id.startswith("key_")
    assert issued.tenant_id == tenant.id
    assert issued.prefix == issued.secret[:12]
    assert looks_like_api_key(issued.secret)
    assert issued.secret not in repr(issued)

    [listed] = await directory.list_keys(tenant.id)
    assert (listed.id, listed.prefix, listed.name, listed.revoked) == (issued.id, issued.prefix, "staging", False)
    assert issued.secret not in repr(listed)
    assert not hasattr(listed, "secret")
    assert not hasattr(listed, "key_hash")


async def test_secret_is_stored_nowhere(directory: TenantDirectory, tenant: Tenant, pg_pool: asyncpg.Pool) -> None:
    issued = await directory.create_key(tenant.id)
    random_part = issued.secret.removeprefix("vg_live_")

    row = await pg_pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", issued.id)
    assert row is not None
    for column, value in row.items():
        as_text = value.hex() if isinstance(value, bytes) else str(value)
        assert random_part[:16] not in as_text, column
        if isinstance(value, bytes):
            assert random_part.encode()[:16] not in value, column
    assert bytes(row["key_hash"]) == hashlib.sha256(issued.secret.encode()).digest()
    # The whole row rendered as text, as a careless dump would show it.
    dumped = await pg_pool.fetchval("SELECT k::text FROM api_keys k WHERE id = $1", issued.id)
    assert random_part[:16] not in dumped


async def test_key_for_unknown_tenant_is_refused(directory: TenantDirectory) -> None:
    with pytest.raises(TenantNotFound, match="ten_nobody"):
        await directory.create_key("ten_nobody")


async def test_good_secret_authenticates(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id)

    assert await directory.authenticate(issued.secret) == KeyIdentity(
        key_id=issued.id, tenant_id=tenant.id, tenant_name=tenant.name
    )


async def test_wrong_or_garbage_secret_does_not_authenticate(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id)
    last = issued.secret[-1]
    one_char_off = issued.secret[:-1] + ("A" if last != "A" else "B")

    for candidate in [
        generate_api_key().secret,  # well-formed, never issued
        one_char_off,
        issued.secret + "x",
        issued.secret.upper(),
        issued.prefix,
        "",
        "Bearer " + issued.secret,
    ]:
        assert await directory.authenticate(candidate) is None, candidate


async def test_revoked_key_stops_authenticating(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id)
    assert await directory.authenticate(issued.secret) is not None

    assert await directory.revoke_key(issued.id) is True
    assert await directory.authenticate(issued.secret) is None
    assert await directory.revoke_key(issued.id) is False
    assert await directory.revoke_key("key_unknown") is False
    [listed] = await directory.list_keys(tenant.id)
    assert listed.revoked


async def test_disabled_tenant_cannot_authenticate(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id)

    assert await directory.disable_tenant(tenant.id) is True
    assert await directory.authenticate(issued.secret) is None
    refreshed = await directory.get_tenant(tenant.id)
    assert refreshed is not None
    assert refreshed.disabled

    assert await directory.enable_tenant(tenant.id) is True
    assert await directory.authenticate(issued.secret) is not None


async def test_tenants_are_isolated(directory: TenantDirectory) -> None:
    alpha = await directory.create_tenant(unique_name("alpha"))
    beta = await directory.create_tenant(unique_name("beta"))
    alpha_key: IssuedKey = await directory.create_key(alpha.id)
    beta_key: IssuedKey = await directory.create_key(beta.id)

    alpha_identity = await directory.authenticate(alpha_key.secret)
    beta_identity = await directory.authenticate(beta_key.secret)
    assert alpha_identity is not None
    assert beta_identity is not None
    assert (alpha_identity.tenant_id, beta_identity.tenant_id) == (alpha.id, beta.id)
    assert [k.id for k in await directory.list_keys(alpha.id)] == [alpha_key.id]
    assert [k.id for k in await directory.list_keys(beta.id)] == [beta_key.id]

    await directory.revoke_key(alpha_key.id)
    await directory.disable_tenant(alpha.id)
    assert await directory.authenticate(beta_key.secret) == beta_identity


async def test_key_use_is_recorded(directory: TenantDirectory, tenant: Tenant) -> None:
    issued = await directory.create_key(tenant.id)
    [before] = await directory.list_keys(tenant.id)
    assert before.last_used_at is None

    await directory.record_key_use(issued.id)

    [after] = await directory.list_keys(tenant.id)
    assert after.last_used_at is not None


async def last_used(pool: asyncpg.Pool, key_id: str) -> Any:
    return await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)


@pytest.mark.e2e
async def test_a_session_records_its_key_use_at_most_once_a_minute(gateway: Any, pg_pool: asyncpg.Pool) -> None:
    key = await make_tenant(pg_pool)
    auth = {"Authorization": f"Bearer {key.secret}"}
    assert await last_used(pg_pool, key.key_id) is None

    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await gateway.services.tenants.wait_for_key_uses()
    assert await pg_pool.fetchval(
        "SELECT last_used_at > now() - interval '1 minute' FROM api_keys WHERE id = $1", key.key_id
    )

    # Within the minute a second session writes nothing (not even the throttled UPDATE).
    await pg_pool.execute("UPDATE api_keys SET last_used_at = '2026-01-01T00:00:00Z' WHERE id = $1", key.key_id)
    marked = await last_used(pg_pool, key.key_id)
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    await gateway.services.tenants.wait_for_key_uses()
    assert await last_used(pg_pool, key.key_id) == marked


async def test_a_key_use_is_written_again_once_its_minute_has_passed(pg_pool: asyncpg.Pool, tenant: Tenant) -> None:
    clock = FakeClock()
    directory = TenantDirectory(pg_pool, clock=clock)
    issued = await directory.create_key(tenant.id)
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)  # past Postgres's own one-minute throttle: only ours holds back

    async def use() -> Any:
        """Mark the key used long ago, authenticate with it, and read what was written."""
        await pg_pool.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", issued.id, long_ago)
        assert await directory.authenticate(issued.secret) is not None
        await directory.wait_for_key_uses()
        return await last_used(pg_pool, issued.id)

    assert await use() > long_ago  # the first use is written
    await clock.advance(KEY_USE_WRITE_INTERVAL_S - 0.5)
    assert await use() == long_ago  # within the minute: nothing is written
    await clock.advance(0.5)
    assert await use() > long_ago  # a minute on: written again


async def test_a_failed_key_use_write_is_logged_never_raised_and_retried(
    pg_dsn: str, pg_pool: asyncpg.Pool, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    issued = await TenantDirectory(pg_pool).create_key(tenant.id)
    parts = urlsplit(pg_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    host = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    pool = await asyncpg.create_pool(urlunsplit((parts.scheme, host, parts.path, "", "")), min_size=1, max_size=1)
    try:
        directory = TenantDirectory(pool)
        with caplog.at_level(logging.WARNING, logger="voxgate.tenants"):
            identity = await directory.authenticate(issued.secret)
            assert identity is not None and identity.key_id == issued.id
            proxy.cut()  # before the background write reaches Postgres
            await directory.wait_for_key_uses()
        assert f"could not record the use of key {issued.id}" in caplog.text
        assert await last_used(pg_pool, issued.id) is None

        proxy.restore()
        assert await directory.authenticate(issued.secret) is not None  # not throttled: the last write failed
        await directory.wait_for_key_uses()
        assert await last_used(pg_pool, issued.id) is not None
    finally:
        await pool.close()
        await proxy.stop()
