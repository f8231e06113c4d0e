-- WebRTC: browser-token keys per tenant, client secrets voxgate minted, and brokered calls.

-- How a tenant's backend signs the short-lived JWTs its browsers present (docs/webrtc.md).
-- hs256_secret is a verification key, so it is stored as given (a hash could not verify a
-- signature); it is never returned by any API or CLI. Production tenants should prefer
-- jwks_url (public keys only: nothing secret is stored).
CREATE TABLE tenant_browser_auth (
    tenant_id    text PRIMARY KEY REFERENCES tenants (id),
    hs256_secret text,
    jwks_url     text,
    audience     text NOT NULL DEFAULT 'voxgate',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (hs256_secret IS NOT NULL OR jwks_url IS NOT NULL)
);

-- Every client secret voxgate minted: which upstream session it opened, for which tenant.
-- `POST /v1/voxgate/calls/{call_id}/attach` accepts a call only if its session is here.
CREATE TABLE minted_client_secrets (
    upstream_session_id text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    session_id          text NOT NULL,            -- voxgate's realtime_sessions.id (written by the ledger)
    end_user_hash       text,
    expires_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX minted_client_secrets_tenant ON minted_client_secrets (tenant_id, created_at);

-- WebRTC calls voxgate brokered (POST /v1/realtime/calls) or had attached, so that any
-- replica can find a call's tenant and session. No foreign key on session_id: the session
-- row is written asynchronously by the ledger writer.
CREATE TABLE realtime_calls (
    call_id             text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    session_id          text NOT NULL,
    api_key_id          text,                     -- the tenant key that brokered or attached it (NULL: browser JWT)
    upstream_session_id text,
    source              text NOT NULL CHECK (source IN ('brokered', 'attached')),
    model               text,
    end_user_hash       text,
    state               text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'ended')),
    end_reason          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    ended_at            timestamptz
);
CREATE INDEX realtime_calls_tenant_created ON realtime_calls (tenant_id, created_at);
CREATE INDEX realtime_calls_active ON realtime_calls (tenant_id) WHERE state = 'active';
