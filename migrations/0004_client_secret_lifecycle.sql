-- Client-secret sessions end, and browser-token keys carry their own history.
--
-- A minted client secret's realtime_sessions row (transport 'client_secret') ends in one of
-- two ways (docs/webrtc.md, "Client-secret lifecycle"):
--   * attached: the call's sideband monitor (or a hangup) ends it when the call ends;
--   * never attached: once the secret has expired (plus a grace period), a sweep on any
--     replica ends it with end_reason 'client_secret_expired'.
-- The row of minted_client_secrets is what the sweep and attach lock against each other.
ALTER TABLE minted_client_secrets
    ADD COLUMN call_id     text,            -- the call attached with this secret's session
    ADD COLUMN attached_at timestamptz,
    ADD COLUMN expired_at  timestamptz;     -- when a sweep ended the session as 'client_secret_expired'

-- Calls attached before this migration.
UPDATE minted_client_secrets m
SET call_id = c.call_id, attached_at = c.created_at
FROM realtime_calls c
WHERE c.source = 'attached' AND c.session_id = m.session_id;

-- What the sweep scans: secrets neither attached nor swept yet, by expiry.
CREATE INDEX minted_client_secrets_unattached ON minted_client_secrets (expires_at)
    WHERE attached_at IS NULL AND expired_at IS NULL;

-- When a tenant's browser-token keys were first configured (updated_at is the last change).
ALTER TABLE tenant_browser_auth ADD COLUMN created_at timestamptz;
UPDATE tenant_browser_auth SET created_at = updated_at;
ALTER TABLE tenant_browser_auth ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE tenant_browser_auth ALTER COLUMN created_at SET NOT NULL;
