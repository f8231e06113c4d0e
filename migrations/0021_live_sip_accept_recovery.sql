-- Inbound SIP (0019), hardened (docs/live.md#sip). Expand-only.
--
-- A ringing session is owned through live_sip_calls.tenant_id alone: its live_sessions owner row
-- is written when the tenant accepts, under the voxgate session id kept here, so a session left in
-- `accepting` (a replica died mid-accept) can be found, and hung up or handed to the failover scan.
-- `state_changed_at` dates the current state: a call still `pending` after the ringing timeout is
-- ended, one `accepting` for longer than any accept could take is recovered.
ALTER TABLE live_sip_calls ADD COLUMN session_id text;
ALTER TABLE live_sip_calls ADD COLUMN state_changed_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX live_sip_calls_waiting ON live_sip_calls (state_changed_at) WHERE state IN ('pending', 'accepting');

-- Deleting a tenant deletes its routed calls, as it does its routes and webhook.
ALTER TABLE live_sip_calls DROP CONSTRAINT live_sip_calls_tenant_id_fkey;
ALTER TABLE live_sip_calls ADD CONSTRAINT live_sip_calls_tenant_id_fkey
    FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE;

-- Verified webhook ids are kept for a retention window (gateway/sip/delivery.py), then deleted.
CREATE INDEX openai_webhook_events_received ON openai_webhook_events (received_at);
