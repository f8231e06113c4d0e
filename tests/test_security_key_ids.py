"""Issue S §9: a browser-token HS256 secret is shown by a random key id, never by a hash of it.

Roles that read the audit log (finance included) used to see `sha256:` + 16 hex digits of
each secret, an offline oracle for a guessable secret. Migration 0006 gives stored secrets
random ids and strips the fingerprints from audit rows already written; new changes record
key ids only (the API side is in tests/test_admin_api.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import asyncpg

from gateway.storage.migrations import apply_migrations

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


async def test_migration_0006_replaces_fingerprints_with_random_ids(empty_pg_dsn: str, tmp_path: Path) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for sql in sorted(MIGRATIONS.glob("000[1-5]_*.sql")):
        shutil.copy(sql, before / sql.name)
    await apply_migrations(empty_pg_dsn, before)
    secret, previous = "s" * 40, "p" * 40
    fingerprint = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('ten_k6', 'k6')")
        await conn.execute(
            "INSERT INTO tenant_browser_auth (tenant_id, hs256_secret, hs256_previous_secret, "
            "hs256_previous_until) VALUES ('ten_k6', $1, $2, now())",
            secret,
            previous,
        )
        detail = {"hs256_fingerprint": fingerprint, "previous_hs256_fingerprint": None, "audience": "voxgate"}
        await conn.execute(
            "INSERT INTO audit_log (actor, tenant_id, action, detail) VALUES "
            "('alice', 'ten_k6', 'browser_auth.set', $1::jsonb)",
            json.dumps(detail),
        )
    finally:
        await conn.close()

    await apply_migrations(empty_pg_dsn, MIGRATIONS)

    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        row = await conn.fetchrow("SELECT hs256_key_id, hs256_previous_key_id FROM tenant_browser_auth")
        audited = json.loads(await conn.fetchval("SELECT detail FROM audit_log WHERE tenant_id = 'ten_k6'"))
    finally:
        await conn.close()
    key_id, previous_id = row["hs256_key_id"], row["hs256_previous_key_id"]
    assert key_id.startswith("hsk_") and previous_id.startswith("hsk_") and key_id != previous_id
    for value, named in ((key_id, secret), (previous_id, previous)):
        assert hashlib.sha256(named.encode()).hexdigest()[:8] not in value
    assert audited == {"audience": "voxgate"}
