-- A slim 15-minute rollup for zones at :30 and :45 past the hour (docs/finance.md#exactness).
--
-- A query grouped and filtered by tenant, model and line item only reads the hourly rollup; an
-- hour a bucket bound cuts (America/St_Johns days start at 03:30 UTC, Asia/Kathmandu days at
-- 18:15) must be read by the quarter. cost_rollup_15m has every dimension (key, end user, tag
-- set), so its quarter hours hold many rows each; this one has the hourly rollup's dimensions at
-- the 15-minute grain, and a covering index, so those hours are a few index-only reads.
-- Statement triggers on cost_rollup_15m add each statement's change to it (the inserted rows, and
-- new minus old for the rows an ON CONFLICT updated), in the statement that wrote cost_rollup_15m.
-- Expand-only: a new table and triggers that write it.

CREATE TABLE cost_rollup_15m_slim (
    bucket_start     timestamptz NOT NULL CHECK (date_bin('15 minutes', bucket_start, timestamptz '2000-01-01 00:00:00+00') = bucket_start),
    tenant_id        text NOT NULL,
    model            text NOT NULL,
    line_item        text NOT NULL,
    unit             text NOT NULL,
    quantity         bigint NOT NULL,
    amount_micro_usd bigint NOT NULL,
    PRIMARY KEY (tenant_id, bucket_start, model, line_item)
);
CREATE INDEX cost_rollup_15m_slim_time ON cost_rollup_15m_slim (bucket_start)
    INCLUDE (tenant_id, model, line_item, unit, quantity, amount_micro_usd);

CREATE FUNCTION cost_rollup_15m_slim_add() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO cost_rollup_15m_slim AS r (bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd)
        SELECT bucket_start, tenant_id, model, line_item, min(unit), sum(quantity), sum(amount_micro_usd)
        FROM added
        GROUP BY tenant_id, bucket_start, model, line_item
        ORDER BY tenant_id, bucket_start, model, line_item
        ON CONFLICT (tenant_id, bucket_start, model, line_item) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, amount_micro_usd = r.amount_micro_usd + excluded.amount_micro_usd;
    ELSE
        INSERT INTO cost_rollup_15m_slim AS r (bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd)
        SELECT bucket_start, tenant_id, model, line_item, min(unit), sum(quantity), sum(amount_micro_usd)
        FROM (SELECT bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd FROM after_rows
              UNION ALL
              SELECT bucket_start, tenant_id, model, line_item, unit, -quantity, -amount_micro_usd FROM before_rows) AS change
        GROUP BY tenant_id, bucket_start, model, line_item
        ORDER BY tenant_id, bucket_start, model, line_item
        ON CONFLICT (tenant_id, bucket_start, model, line_item) DO UPDATE
        SET quantity = r.quantity + excluded.quantity, amount_micro_usd = r.amount_micro_usd + excluded.amount_micro_usd;
    END IF;
    RETURN NULL;
END
$$;

-- CREATE TRIGGER locks cost_rollup_15m against writes (SHARE ROW EXCLUSIVE) until this migration
-- commits, and only it: no other table is locked, so no lock order to deadlock on. A writer that
-- changed cost_rollup_15m before has committed when the lock is granted (its rows are in the copy
-- below); one that comes after waits at its write, inside the ledger statement's trigger, and then
-- runs with these triggers (a lock granted re-reads the table's triggers). Every line reaches the
-- slim rollup once. Ledger writes pause for the copy (docs/operations.md#upgrading).
CREATE TRIGGER cost_rollup_15m_slim_insert AFTER INSERT ON cost_rollup_15m
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION cost_rollup_15m_slim_add();
CREATE TRIGGER cost_rollup_15m_slim_update AFTER UPDATE ON cost_rollup_15m
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows FOR EACH STATEMENT EXECUTE FUNCTION cost_rollup_15m_slim_add();

-- Everything rolled up so far: one grouped read of cost_rollup_15m, no array in memory.
INSERT INTO cost_rollup_15m_slim (bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd)
SELECT bucket_start, tenant_id, model, line_item, min(unit), sum(quantity), sum(amount_micro_usd)
FROM cost_rollup_15m
GROUP BY tenant_id, bucket_start, model, line_item;
