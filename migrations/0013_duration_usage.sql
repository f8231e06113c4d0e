-- Time-billed usage (GPT-Live voice time, Realtime translation audio) and which tenant owns
-- each GPT-Live session voxgate created, so controls, sidebands and forks are proxied only
-- for their owner (docs/webrtc.md#gpt-live-over-webrtc, docs/translation.md).

-- One row per (session, kind, usage_id): a retried or replayed write is a no-op.
-- kind: 'live_voice' (a Live session's voice seconds), 'translation' (appended audio).
CREATE TABLE duration_usage (
    session_id     text NOT NULL REFERENCES realtime_sessions (id),
    kind           text NOT NULL,
    usage_id       text NOT NULL,
    tenant_id      text NOT NULL REFERENCES tenants (id),
    model          text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    active_ms      bigint NOT NULL CHECK (active_ms >= 0),
    standby_ms     bigint NOT NULL CHECK (standby_ms >= 0),
    estimated      boolean NOT NULL,          -- true: no final usage from upstream; wall-clock bound
    cost_micro_usd bigint NOT NULL CHECK (cost_micro_usd >= 0),
    price_version  text NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, kind, usage_id)
);
CREATE INDEX duration_usage_tenant_time ON duration_usage (tenant_id, occurred_at)
    INCLUDE (model, cost_micro_usd);

-- GPT-Live sessions voxgate created or forked over HTTP (WebRTC), by upstream id (live_...).
-- No foreign key on session_id: the session row is written asynchronously by the ledger.
CREATE TABLE live_sessions (
    live_session_id text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    session_id      text NOT NULL,             -- voxgate's realtime_sessions.id
    api_key_id      text,
    model           text NOT NULL,
    end_user_hash   text,
    forked_from     text,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'ended')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz
);
CREATE INDEX live_sessions_active ON live_sessions (tenant_id) WHERE state = 'active';
