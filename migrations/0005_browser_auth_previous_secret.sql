-- HS256 rotation with an overlap window (docs/admin-api.md, "Browser-token keys").
--
-- When a tenant's HS256 browser-token secret is replaced, the replaced secret stays valid
-- until hs256_previous_until (by the database clock), so browser tokens already signed with
-- it keep working until they expire. Like hs256_secret, it is a verification key stored as
-- given and never returned by the API or the CLI. Deleting the row removes both.
ALTER TABLE tenant_browser_auth
    ADD COLUMN hs256_previous_secret text,
    ADD COLUMN hs256_previous_until  timestamptz,
    ADD CONSTRAINT tenant_browser_auth_previous_pair
        CHECK ((hs256_previous_secret IS NULL) = (hs256_previous_until IS NULL));
