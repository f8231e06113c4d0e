"""Every SQL statement of the stores in `gateway.storage`, named and kept as plain text.

The migration runner, the tenant directory (tenants, API keys), tenant policies and the audit
log. The other stores keep theirs in one module each: the ledger in `gateway.ledger.sql`, WebRTC
calls and minted secrets in `gateway.webrtc.calls_sql`, browser-token keys in
`gateway.auth.browser_keys`. Parameters are always ``$n`` placeholders bound by asyncpg; nothing here
is ever formatted with user input.
"""

from __future__ import annotations

# --- migrations -----------------------------------------------------------------------------

ADVISORY_LOCK = "SELECT pg_advisory_lock($1)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock($1)"

CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

APPLIED_MIGRATIONS = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"

RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, checksum, expand_only) VALUES ($1, $2, $3, $4)"

# Whether each migration only expands the schema (gateway/storage/migration_safety.py); rows an
# older runner wrote were all expand-only, hence the default.
ADD_EXPAND_ONLY_COLUMN = (
    "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS expand_only boolean NOT NULL DEFAULT true"
)

EXPAND_ONLY_COLUMN_EXISTS = """
SELECT count(*) > 0 FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'schema_migrations' AND column_name = 'expand_only'
"""

# The migrations above a version that an older release cannot run on.
CONTRACTS_AFTER = "SELECT name FROM schema_migrations WHERE version > $1 AND NOT expand_only ORDER BY version"

SCHEMA_MIGRATIONS_EXISTS = "SELECT to_regclass('schema_migrations')"

SCHEMA_VERSION = "SELECT max(version) FROM schema_migrations"

# --- tenants --------------------------------------------------------------------------------

INSERT_TENANT = """
INSERT INTO tenants (id, name) VALUES ($1, $2)
RETURNING id, name, created_at, disabled_at
"""

LIST_TENANTS = "SELECT id, name, created_at, disabled_at FROM tenants ORDER BY created_at, id"

GET_TENANT = "SELECT id, name, created_at, disabled_at FROM tenants WHERE id = $1"

DISABLE_TENANT = """
UPDATE tenants SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL RETURNING id
"""

ENABLE_TENANT = """
UPDATE tenants SET disabled_at = NULL WHERE id = $1 AND disabled_at IS NOT NULL RETURNING id
"""

# --- API keys -------------------------------------------------------------------------------

INSERT_API_KEY = """
INSERT INTO api_keys (id, tenant_id, prefix, key_hash, name) VALUES ($1, $2, $3, $4, $5)
RETURNING id, tenant_id, prefix, name, created_at
"""

REVOKE_API_KEY = """
UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id
"""

LIST_API_KEYS = """
SELECT id, tenant_id, prefix, name, created_at, revoked_at, last_used_at
FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id
"""

KEY_TENANT = "SELECT tenant_id FROM api_keys WHERE id = $1"

# Only usable keys of enabled tenants match; the caller re-checks the hash in constant time.
AUTHENTICATE_API_KEY = """
SELECT k.id AS key_id, k.key_hash, t.id AS tenant_id, t.name AS tenant_name
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND t.disabled_at IS NULL
"""

# Throttled so a busy key costs at most one write per minute.
TOUCH_API_KEY = """
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""

# --- policies (gateway.storage.policy_store) ----------------------------------------------

EFFECTIVE_POLICY = """
SELECT t.tier, p.version, p.document
FROM tenants t
LEFT JOIN LATERAL (
    SELECT version, document FROM tenant_policies WHERE tenant_id = t.id ORDER BY version DESC LIMIT 1
) p ON true
WHERE t.id = $1
"""

LOCK_TENANT = "SELECT tier FROM tenants WHERE id = $1 FOR UPDATE"

# The caller holds the tenant row lock, so max(version) + 1 cannot race.
INSERT_POLICY_VERSION = """
INSERT INTO tenant_policies (tenant_id, version, document, created_by)
SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb, $3 FROM tenant_policies WHERE tenant_id = $1
RETURNING version, created_at
"""

POLICY_HISTORY = """
SELECT tenant_id, version, document, created_at, created_by
FROM tenant_policies WHERE tenant_id = $1 ORDER BY version DESC
"""

SET_TENANT_TIER = "UPDATE tenants SET tier = $2 WHERE id = $1"

TENANT_TIERS = "SELECT id, tier FROM tenants"


# --- audit log (admin changes; the ledger appends policy decisions: gateway.ledger.sql) -----

INSERT_AUDIT = """
INSERT INTO audit_log (actor, tenant_id, action, detail) VALUES ($1, $2, $3, $4::jsonb)
RETURNING id
"""

AUDIT_FOR_TENANT = """
SELECT id, at, actor, tenant_id, action, detail
FROM audit_log WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2
"""
