-- voxgate initial schema: tenants, API keys, sessions, the usage ledger.
-- Money is integer micro-USD (1 USD = 1_000_000). Token counts are bigint.

CREATE TABLE tenants (
    id          text PRIMARY KEY,                 -- "ten_" + random
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,                -- "key_" + random; safe to show and log
    tenant_id    text NOT NULL REFERENCES tenants (id),
    prefix       text NOT NULL,                   -- first characters of the secret, for humans
    key_hash     bytea NOT NULL UNIQUE,           -- sha256 of the whole secret; the secret is never stored
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE realtime_sessions (
    id                  text PRIMARY KEY,         -- "vgs_" + random, minted by the gateway
    tenant_id           text NOT NULL REFERENCES tenants (id),
    api_key_id          text REFERENCES api_keys (id),
    transport           text NOT NULL
        CHECK (transport IN ('websocket', 'webrtc', 'sideband', 'client_secret')),
    intent              text NOT NULL DEFAULT 'realtime',
    model               text,
    voice               text,
    upstream_session_id text,
    end_user_hash       text,
    gateway_instance    text,
    started_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    end_reason          text,
    end_detail          text,
    responses           integer NOT NULL DEFAULT 0,
    input_tokens        bigint  NOT NULL DEFAULT 0,
    output_tokens       bigint  NOT NULL DEFAULT 0,
    cost_micro_usd      bigint  NOT NULL DEFAULT 0
);
CREATE INDEX realtime_sessions_tenant_started ON realtime_sessions (tenant_id, started_at);
CREATE INDEX realtime_sessions_open ON realtime_sessions (gateway_instance) WHERE ended_at IS NULL;

-- One row per upstream response_id: the primary key makes every write idempotent.
CREATE TABLE usage_ledger (
    response_id         text PRIMARY KEY,
    session_id          text NOT NULL REFERENCES realtime_sessions (id),
    tenant_id           text NOT NULL REFERENCES tenants (id),
    model               text NOT NULL,
    status              text NOT NULL,            -- completed | cancelled | incomplete | failed
    occurred_at         timestamptz NOT NULL,
    input_tokens        bigint NOT NULL,          -- as reported (includes cached)
    output_tokens       bigint NOT NULL,
    total_tokens        bigint NOT NULL,
    input_text_tokens   bigint NOT NULL,
    input_audio_tokens  bigint NOT NULL,
    input_image_tokens  bigint NOT NULL,
    cached_text_tokens  bigint NOT NULL,          -- subset of input_text_tokens
    cached_audio_tokens bigint NOT NULL,
    cached_image_tokens bigint NOT NULL,
    output_text_tokens  bigint NOT NULL,
    output_audio_tokens bigint NOT NULL,
    cost_micro_usd      bigint NOT NULL CHECK (cost_micro_usd >= 0),
    price_version       text NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
-- "cost per tenant per day per model": a range scan on (tenant, time) that never touches the heap.
CREATE INDEX usage_ledger_tenant_time ON usage_ledger (tenant_id, occurred_at)
    INCLUDE (model, cost_micro_usd, input_tokens, output_tokens);
CREATE INDEX usage_ledger_session ON usage_ledger (session_id);

-- Input audio transcription is billed separately, at the ASR model's rates.
CREATE TABLE transcription_usage (
    session_id         text NOT NULL REFERENCES realtime_sessions (id),
    item_id            text NOT NULL,
    content_index      integer NOT NULL DEFAULT 0,
    tenant_id          text NOT NULL REFERENCES tenants (id),
    model              text NOT NULL,
    occurred_at        timestamptz NOT NULL,
    usage_type         text NOT NULL CHECK (usage_type IN ('tokens', 'duration')),
    input_text_tokens  bigint NOT NULL DEFAULT 0,
    input_audio_tokens bigint NOT NULL DEFAULT 0,
    output_tokens      bigint NOT NULL DEFAULT 0,
    duration_ms        bigint NOT NULL DEFAULT 0,
    cost_micro_usd     bigint NOT NULL CHECK (cost_micro_usd >= 0),
    price_version      text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, item_id, content_index)
);
CREATE INDEX transcription_usage_tenant_time ON transcription_usage (tenant_id, occurred_at)
    INCLUDE (model, cost_micro_usd);

-- What upstream said about the organisation's headroom, one row per limit per event.
CREATE TABLE rate_limit_snapshots (
    id            bigserial PRIMARY KEY,
    session_id    text NOT NULL REFERENCES realtime_sessions (id),
    tenant_id     text NOT NULL REFERENCES tenants (id),
    observed_at   timestamptz NOT NULL,
    name          text NOT NULL,                  -- requests | tokens
    limit_value   bigint NOT NULL,
    remaining     bigint NOT NULL,
    reset_seconds double precision NOT NULL
);
CREATE INDEX rate_limit_snapshots_time ON rate_limit_snapshots (observed_at DESC, name);
