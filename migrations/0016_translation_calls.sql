-- Realtime translation WebRTC calls voxgate brokered (POST /v1/realtime/translations/calls),
-- metered by wall-clock time (docs/translation.md#webrtc-calls). voxgate never sees a
-- translation call's media and upstream reports no usage, so this row is the call's meter:
-- it is written before the SDP answer is returned, and any replica's sweeper ends it (hangs it
-- up upstream at the cap, books it) if the replica that placed it is gone.
CREATE TABLE translation_calls (
    call_id           text PRIMARY KEY,           -- upstream's call id (from its Location header)
    tenant_id         text NOT NULL REFERENCES tenants (id),
    session_id        text NOT NULL REFERENCES realtime_sessions (id),
    api_key_id        text,                       -- NULL: placed with a browser JWT
    end_user_hash     text,                       -- the caller's safety identifier
    model             text NOT NULL,
    reservation_id    text NOT NULL,              -- the budget hold of the cap's cost (Redis)
    reserved_micro_usd bigint NOT NULL CHECK (reserved_micro_usd >= 0),
    offered_at        timestamptz NOT NULL,       -- when voxgate sent the offer upstream: the meter's start
    cap_at            timestamptz NOT NULL,       -- offered_at + the policy's session cap
    state             text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'ended')),
    claimed_until     timestamptz,                -- a replica is ending it until then (hangup or sweep)
    end_reason        text CHECK (end_reason IN ('hangup', 'cap')),
    ended_at          timestamptz,                -- the meter's end
    cost_micro_usd    bigint CHECK (cost_micro_usd >= 0),
    -- false after a cap was booked while upstream's hangup had not succeeded yet: swept again
    upstream_hung_up  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX translation_calls_due ON translation_calls (cap_at) WHERE state = 'active' OR NOT upstream_hung_up;
