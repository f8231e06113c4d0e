-- Inbound SIP on GPT-Live (docs/live.md#sip): OpenAI's webhooks, routed to tenants by called number.

-- How a recorded Live session reaches its caller: 'webrtc', or 'sip' (an inbound call routed here, or an
-- outbound call voxgate placed). A SIP session has no prepaid initialisation time.
ALTER TABLE live_sessions ADD COLUMN transport text NOT NULL DEFAULT 'webrtc';

-- Every OpenAI webhook delivery voxgate verified, by its `webhook-id`: a replay is acknowledged and
-- never processed twice.
CREATE TABLE openai_webhook_events (
    webhook_id  text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Which tenant answers calls to a number (the user part of the SIP `To` URI, e.g. +18005550100).
CREATE TABLE sip_routes (
    called     text PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sip_routes_tenant ON sip_routes (tenant_id);

-- Where a tenant's inbound-call events go, signed with its own Standard Webhooks secret.
CREATE TABLE tenant_sip_webhooks (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    url        text NOT NULL,
    secret     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One inbound SIP session routed to a tenant (its owner row is in live_sessions) and the outbox
-- of its delivery to the tenant's webhook.
CREATE TABLE live_sip_calls (
    live_session_id text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    delivery_id     text NOT NULL UNIQUE,           -- the webhook-id of every attempt
    sip_call_id     text,                           -- the SIP Call-ID header, when sent
    called          text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'accepting', 'accepted', 'rejected', 'referred', 'ended')),
    event           jsonb NOT NULL,                 -- what the tenant's webhook receives
    received_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_status     text,
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    given_up_at     timestamptz
);
CREATE UNIQUE INDEX live_sip_calls_call_id ON live_sip_calls (sip_call_id) WHERE sip_call_id IS NOT NULL;
CREATE INDEX live_sip_calls_due ON live_sip_calls (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
