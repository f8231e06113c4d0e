-- A GPT-Live session's delegated backend usage: one row per delegated Responses response
-- (kind 'response', usage_id the response id) or Decisions decision (kind 'decision', usage_id
-- the decision.event's event_id), priced by the response's own model and service tier.
-- Its voice time is in duration_usage (kind 'live_voice'). Idempotent per (session, kind, id).
CREATE TABLE live_token_usage (
    session_id          text NOT NULL REFERENCES realtime_sessions (id),
    kind                text NOT NULL CHECK (kind IN ('response', 'decision')),
    usage_id            text NOT NULL,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    model               text NOT NULL,
    service_tier        text,
    status              text NOT NULL,
    occurred_at         timestamptz NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),          -- as reported (includes cached)
    cached_input_tokens bigint NOT NULL CHECK (cached_input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),         -- includes reasoning
    cost_micro_usd      bigint NOT NULL CHECK (cost_micro_usd >= 0),
    price_version       text NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, kind, usage_id)
);
CREATE INDEX live_token_usage_tenant_time ON live_token_usage (tenant_id, occurred_at)
    INCLUDE (model, cost_micro_usd);
