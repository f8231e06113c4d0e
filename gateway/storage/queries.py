"""Every SQL statement the storage layer runs, named and kept as plain text.

Parameters are always ``$n`` placeholders bound by asyncpg; nothing here is ever
formatted with user input.
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

RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"

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

# --- usage reports --------------------------------------------------------------------------

# $2 is an optional lower bound: NULL means "since the beginning".
LEDGER_ROWS = """
SELECT response_id, session_id, occurred_at, model, status,
       input_tokens, output_tokens, total_tokens,
       input_text_tokens, input_audio_tokens, input_image_tokens,
       cached_text_tokens, cached_audio_tokens, cached_image_tokens,
       output_text_tokens, output_audio_tokens,
       cost_micro_usd, price_version
FROM usage_ledger
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
ORDER BY occurred_at, response_id
"""

# sum(bigint) is numeric in Postgres; cast back so totals stay exact Python ints.
LEDGER_TOTALS = """
SELECT count(*)::bigint AS responses,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM usage_ledger
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
"""

TRANSCRIPTION_TOTALS = """
SELECT count(*)::bigint AS items,
       coalesce(sum(input_audio_tokens), 0)::bigint AS input_audio_tokens,
       coalesce(sum(input_text_tokens), 0)::bigint AS input_text_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(duration_ms), 0)::bigint AS duration_ms,
       coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd
FROM transcription_usage
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
"""

# Half-open range [$2, $3) on (tenant_id, occurred_at): an index-only scan of
# usage_ledger_tenant_time, whose INCLUDE columns carry model and cost. Days are UTC.
DAILY_COSTS = """
SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
       model,
       count(*)::bigint AS responses,
       sum(cost_micro_usd)::bigint AS cost_micro_usd
FROM usage_ledger
WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3
GROUP BY day, model
ORDER BY day, model
"""
