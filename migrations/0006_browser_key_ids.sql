-- Browser-token HS256 secrets are named by a random key id, never by a hash of the secret
-- (issue S §9, docs/security.md). An unsalted SHA-256 prefix of a secret, readable by every
-- role that reads the audit log, let a low-entropy secret be guessed offline.
--
-- hs256_key_id names hs256_secret; hs256_previous_key_id names hs256_previous_secret while
-- its overlap window is open. A secret set again keeps its id; a new secret gets a new one.
ALTER TABLE tenant_browser_auth
    ADD COLUMN hs256_key_id          text,
    ADD COLUMN hs256_previous_key_id text;

UPDATE tenant_browser_auth
SET hs256_key_id = 'hsk_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20)
WHERE hs256_secret IS NOT NULL;

UPDATE tenant_browser_auth
SET hs256_previous_key_id = 'hsk_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 20)
WHERE hs256_previous_secret IS NOT NULL;

-- Audit rows written before this migration carry those fingerprints: drop them.
UPDATE audit_log
SET detail = detail - 'hs256_fingerprint' - 'previous_hs256_fingerprint'
WHERE action = 'browser_auth.set';
