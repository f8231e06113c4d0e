-- Policies: tenant tiers, versioned per-tenant policy documents, and the audit log.

-- The named tier (from the tiers file) a tenant falls back to when it has no policy of its own.
ALTER TABLE tenants ADD COLUMN tier text;

-- Every policy ever set for a tenant; the highest version is the one in force. Rows are never
-- updated or deleted, so the history is the audit trail of what was enforced when.
CREATE TABLE tenant_policies (
    tenant_id  text NOT NULL REFERENCES tenants (id),
    version    integer NOT NULL CHECK (version >= 1),
    document   jsonb NOT NULL,                    -- policy_to_document() of the validated policy
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,                     -- the admin JWT's subject, or "cli"
    PRIMARY KEY (tenant_id, version)
);

-- Who changed what. No foreign key on tenant_id: audit rows outlive what they describe.
CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    tenant_id text,
    action    text NOT NULL,                      -- e.g. policy.set, key.create, budget.alert
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);
