"""Every SQL statement of the calls store (`realtime_calls`, `minted_client_secrets`) in one place.

Parameters are always ``$n`` placeholders bound by asyncpg; the only values joined into the
text are the fixed constants below, once, at import.
"""

from __future__ import annotations

from typing import Final

EXPIRED_UNATTACHED: Final = "client_secret_expired"  # realtime_sessions.end_reason of a secret never attached
MAX_SECRET_LIFETIME_S: Final = 7200  # upstream's longest `expires_after`: the expiry of a secret stored without one

INSERT_CALL: Final = """
INSERT INTO realtime_calls (call_id, tenant_id, session_id, upstream_session_id, source, model, end_user_hash,
                            state, created_at, api_key_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9)
ON CONFLICT (call_id) DO NOTHING
RETURNING call_id
"""

_CALL_COLUMNS: Final = """call_id, tenant_id, session_id, api_key_id, upstream_session_id, source, model, end_user_hash,
       state, end_reason, created_at, ended_at"""

GET_CALL: Final = f"SELECT {_CALL_COLUMNS} FROM realtime_calls WHERE call_id = $1"

ACTIVE_CALLS: Final = f"SELECT {_CALL_COLUMNS} FROM realtime_calls WHERE state = 'active' ORDER BY created_at LIMIT $1"

REOPEN_CALL: Final = """
UPDATE realtime_calls SET state = 'active', end_reason = NULL, ended_at = NULL
WHERE call_id = $1 AND state = 'ended' AND end_reason = $2
RETURNING call_id
"""


END_CALL: Final = """
UPDATE realtime_calls SET state = 'ended', end_reason = $2, ended_at = $3
WHERE call_id = $1 AND state = 'active'
RETURNING call_id
"""

INSERT_MINTED: Final = """
INSERT INTO minted_client_secrets (upstream_session_id, tenant_id, session_id, end_user_hash, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (upstream_session_id) DO NOTHING
"""

GET_MINTED: Final = """
SELECT upstream_session_id, tenant_id, session_id, end_user_hash FROM minted_client_secrets
WHERE upstream_session_id = $1
"""

# Whether a tenant holds a secret voxgate minted that no call was attached with yet and that
# may still carry a live call (one placed just before its secret expired lasts at most
# MAX_CALL_SECONDS more). Attach asks this before it opens anything upstream. $2 = now - MAX_CALL_SECONDS.
HAS_ATTACHABLE_SECRET: Final = f"""
SELECT EXISTS (
    SELECT 1 FROM minted_client_secrets
    WHERE tenant_id = $1 AND attached_at IS NULL
      AND COALESCE(expires_at, created_at + interval '{MAX_SECRET_LIFETIME_S} seconds') > $2
)
"""

# Attach takes the secret's row lock (a running sweep has it, or skips it), then un-ends a
# session a sweep ended first: the call's end will end it again, with the call's reason.
LOCK_MINTED: Final = "SELECT expired_at FROM minted_client_secrets WHERE upstream_session_id = $1 FOR UPDATE"

MARK_MINTED_ATTACHED: Final = """
UPDATE minted_client_secrets
SET call_id = COALESCE(call_id, $2), attached_at = COALESCE(attached_at, $3), expired_at = NULL
WHERE upstream_session_id = $1
"""

REOPEN_EXPIRED_SESSION: Final = f"""
UPDATE realtime_sessions SET ended_at = NULL, end_reason = NULL, end_detail = NULL
WHERE id = $1 AND end_reason = '{EXPIRED_UNATTACHED}'
"""

# Secrets past expiry + grace, never attached, whose session row the ledger has written:
# mark them swept and end their open session rows at the secret's expiry. SKIP LOCKED lets
# replicas sweep at once without waiting on each other or ending a row twice.
# $1 now, $2 expiry cutoff, $3 creation cutoff (secrets stored without an expiry), $4 batch, $5 detail.
SWEEP_EXPIRED_SECRETS: Final = f"""
WITH due AS (
    SELECT m.upstream_session_id
    FROM minted_client_secrets m
    WHERE m.attached_at IS NULL AND m.expired_at IS NULL
      AND (m.expires_at < $2 OR (m.expires_at IS NULL AND m.created_at < $3))
      AND EXISTS (SELECT 1 FROM realtime_sessions s WHERE s.id = m.session_id)
    ORDER BY m.expires_at
    LIMIT $4
    FOR UPDATE OF m SKIP LOCKED
), swept AS (
    UPDATE minted_client_secrets m SET expired_at = $1
    FROM due
    WHERE m.upstream_session_id = due.upstream_session_id
    RETURNING m.session_id, COALESCE(m.expires_at, m.created_at + interval '{MAX_SECRET_LIFETIME_S} seconds') AS expiry
), ended AS (
    UPDATE realtime_sessions s
    SET ended_at = LEAST(swept.expiry, $1), end_reason = '{EXPIRED_UNATTACHED}', end_detail = $5
    FROM swept
    WHERE s.id = swept.session_id AND s.ended_at IS NULL
    RETURNING s.id
)
SELECT (SELECT count(*) FROM swept) AS swept, ARRAY(SELECT id FROM ended) AS ended
"""
