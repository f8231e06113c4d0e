-- Budget alerts: one row per tenant, period, period start and threshold (the outbox the webhook
-- sender delivers from), and the per-tenant webhook that overrides VOXGATE_ALERT_WEBHOOK_URL.
-- docs/finance.md, "Budget alerts".

CREATE TABLE budget_alerts (
    id               text PRIMARY KEY,          -- the webhook-id; a retry sends the same one
    tenant_id        text NOT NULL,             -- no foreign key: the log outlives the tenant
    period           text NOT NULL CHECK (period IN ('day', 'month')),
    period_start     date NOT NULL,             -- the UTC day, or the first day of the UTC month
    threshold        double precision NOT NULL, -- the policy's alert_at fraction
    budget_micro_usd bigint NOT NULL,
    spent_micro_usd  bigint NOT NULL,           -- the spend just after the settle that crossed it
    crossed_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    claimed_until    timestamptz,               -- a sender is delivering it until then
    last_attempt_at  timestamptz,
    last_status      text,                      -- the HTTP status, or why there was none
    delivered_at     timestamptz,
    given_up_at      timestamptz,
    UNIQUE (tenant_id, period, period_start, threshold)
);
CREATE INDEX budget_alerts_due ON budget_alerts (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX budget_alerts_tenant_crossed ON budget_alerts (tenant_id, crossed_at);

CREATE TABLE tenant_alert_webhooks (
    tenant_id  text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    url        text NOT NULL,
    secret     text NOT NULL,                   -- whsec_…; never returned by the admin API
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The settle that crosses a threshold writes a `budget.alert` audit row through the ledger
-- writer (journaled, retried, replayed). Claiming the outbox row in the same statement makes
-- the crossing durable with its audit row, and the unique key makes it happen once: concurrent
-- settles, other replicas and replays of the same crossing insert nothing, and their duplicate
-- audit row is skipped.
CREATE FUNCTION claim_budget_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.detail ? 'period_start') THEN
        RETURN NEW;  -- written before this migration: nothing to deliver
    END IF;
    INSERT INTO budget_alerts (id, tenant_id, period, period_start, threshold, budget_micro_usd,
                               spent_micro_usd, crossed_at, next_attempt_at)
    VALUES (
        'msg_' || md5(concat_ws('/', NEW.tenant_id, NEW.detail ->> 'period',
                                NEW.detail ->> 'period_start', NEW.detail ->> 'threshold')),
        NEW.tenant_id,
        NEW.detail ->> 'period',
        (NEW.detail ->> 'period_start')::date,
        (NEW.detail ->> 'threshold')::double precision,
        (NEW.detail ->> 'budget_micro_usd')::bigint,
        (NEW.detail ->> 'spent_micro_usd')::bigint,
        NEW.at,
        NEW.at
    )
    ON CONFLICT (tenant_id, period, period_start, threshold) DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_log_claims_budget_alerts
    BEFORE INSERT ON audit_log
    FOR EACH ROW WHEN (NEW.action = 'budget.alert')
    EXECUTE FUNCTION claim_budget_alert();
