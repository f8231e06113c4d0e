-- Budget alerts (0009): a crossing claimed at the same moment by two writers (the settle paths of
-- two replicas, or the ledger sweep, gateway/alerts/recovery.py, racing a settle) must leave one
-- outbox row and no error. 0009's claim named the unique key (tenant_id, period, period_start,
-- threshold) as its only arbiter, so the loser of such a race failed on the primary key (the
-- same `msg_…` id, derived from that key) instead of inserting nothing. Any conflict is the same
-- crossing, so the claim now gives way on either. Expand-only: the function keeps its signature.
CREATE OR REPLACE FUNCTION claim_budget_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.detail ? 'period_start') THEN
        RETURN NEW;  -- written before 0009: nothing to deliver
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
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    RETURN NULL;  -- claimed already: the duplicate audit row is dropped
END
$$;
