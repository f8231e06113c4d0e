-- GPT-Live and translation spend in the cost rollups (docs/finance.md#line-items): time-billed
-- rows (duration_usage) and a Live session's delegated tokens (live_token_usage) are added to
-- cost_rollup_15m / _1h / _1d like the realtime ledger (0008): by statement-level triggers over
-- the rows a statement really inserted, so a retried or replayed write (ON CONFLICT DO NOTHING)
-- adds nothing; and the rows written before this migration are added once, below. Each row's
-- cost_micro_usd is split into line items that sum to it exactly. Expand-only.
--
-- price_line_rates gains the rates these splits weigh by (registered by the gateway at start,
-- gateway/finance/rates.py): a Responses model's 'input', 'cached input', 'output' (micro-USD per
-- 1M tokens) and a per-minute model's 'session active seconds', 'session standby seconds'
-- (micro-USD per minute: only the ratio of two rates of one model is used).

-- One part of a row's cost: row n's line item `line_item` of `quantity` units, weighing `weight`
-- (quantity x rate; NULL when the rate is not registered). The row's cost is `cost`.
CREATE TYPE cost_part AS (
    n         bigint,
    ord       integer,
    line_item text,
    quantity  bigint,
    weight    numeric,
    cost      bigint
);

-- Each row's cost split over its parts in proportion to weight, by largest remainder (ties to the
-- lower ord), so the parts sum to the cost exactly. A row with an unrated part or no weight at all
-- returns nothing: its caller books it as one line.
CREATE FUNCTION cost_split(parts cost_part[]) RETURNS TABLE (n bigint, line_item text, quantity bigint, amount bigint)
LANGUAGE sql IMMUTABLE AS $$
WITH weighed AS (
    SELECT p.*, sum(p.weight) OVER w AS total, count(*) FILTER (WHERE p.weight IS NULL) OVER w AS unrated
    FROM unnest(parts) AS p WINDOW w AS (PARTITION BY p.n)
),
split AS (
    SELECT s.*, s.cost - sum(s.base) OVER (PARTITION BY s.n) AS leftover,
           row_number() OVER (PARTITION BY s.n ORDER BY s.rem DESC, s.ord) AS place
    FROM (SELECT w.*, div(w.cost * w.weight, w.total) AS base, mod(w.cost * w.weight, w.total) AS rem
          FROM weighed w WHERE w.total > 0 AND w.unrated = 0) AS s
)
SELECT s.n, s.line_item, s.quantity, (s.base + CASE WHEN s.place <= s.leftover THEN 1 ELSE 0 END)::bigint
FROM split s
$$;

-- Which registered model prices each (price version, model): itself, its undated name, or the ceiling ('*').
CREATE FUNCTION cost_rate_model(version text, model text) RETURNS text
LANGUAGE sql STABLE AS $$
SELECT m.model FROM price_line_rates m
WHERE m.price_version = version
  AND m.model IN (cost_rate_model.model, regexp_replace(cost_rate_model.model, '-[0-9]{4}-[0-9]{2}-[0-9]{2}$', ''), '*')
ORDER BY m.model = cost_rate_model.model DESC, m.model = '*' LIMIT 1
$$;

-- Time-billed rows, quantities in milliseconds:
--   'live_voice'  -> '<model>, session active seconds' and '<model>, session standby seconds'. A row
--                    books the session's cumulative time (usage_id 'active:standby') at the cost of
--                    its increase, so its quantities are, per kind of time, its increase over the
--                    largest of the session's bookings counted before it (never negative): a late
--                    booking below one already counted adds nothing, so a session's quantities sum
--                    to its largest cumulative time whatever order its bookings arrive in. Counted
--                    before it: for the insert trigger, the session's rows outside the statement
--                    (committed: the trigger serialises a session's writers, below) and the ones
--                    earlier in the statement; for the backfill (`in_order`), the rows ordered below
--                    it by (active, standby, usage_id). The cost is split by increase x rate.
--                    Unregistered rates with both increases non-zero: one '<model>, session seconds'.
--   'translation' -> '<model>, audio seconds' (appended audio).
--   any other     -> '<model>, <kind> seconds'.
CREATE FUNCTION cost_duration_lines(batch duration_usage[], in_order boolean DEFAULT false) RETURNS SETOF cost_line
LANGUAGE sql STABLE AS $$
WITH b AS MATERIALIZED (
    SELECT d.*, d.ordinality AS n FROM unnest(batch) WITH ORDINALITY AS d
),
u AS MATERIALIZED (
    SELECT d.*,
           CASE WHEN d.kind = 'live_voice' THEN greatest(d.active_ms - coalesce(p.active_ms, 0), 0) ELSE d.active_ms END AS active_q,
           CASE WHEN d.kind = 'live_voice' THEN greatest(d.standby_ms - coalesce(p.standby_ms, 0), 0) ELSE d.standby_ms END AS standby_q
    FROM b AS d
    LEFT JOIN LATERAL (
        SELECT max(e.active_ms) AS active_ms, max(e.standby_ms) AS standby_ms
        FROM (
            SELECT e.active_ms, e.standby_ms FROM duration_usage e
            WHERE d.kind = 'live_voice' AND e.session_id = d.session_id AND e.kind = d.kind AND e.usage_id <> d.usage_id
              AND CASE WHEN in_order THEN (e.active_ms, e.standby_ms, e.usage_id) < (d.active_ms, d.standby_ms, d.usage_id)
                       ELSE NOT EXISTS (SELECT 1 FROM b WHERE b.session_id = e.session_id AND b.kind = e.kind
                                                         AND b.usage_id = e.usage_id) END
            UNION ALL
            SELECT o.active_ms, o.standby_ms FROM b o
            WHERE NOT in_order AND d.kind = 'live_voice' AND o.session_id = d.session_id AND o.kind = d.kind AND o.n < d.n
        ) AS e
    ) AS p ON true
),
-- A booking that adds no time (one below a booking counted before it) still books its cost: split
-- by its own cumulative time instead, at zero quantity.
w AS (
    SELECT u.*, CASE WHEN u.active_q + u.standby_q > 0 THEN u.active_q ELSE u.active_ms END AS active_w,
                CASE WHEN u.active_q + u.standby_q > 0 THEN u.standby_q ELSE u.standby_ms END AS standby_w
    FROM u
),
voice AS (
    SELECT w.n, k.ord, w.model || ', ' || k.kind AS line_item, k.ms AS quantity, w.cost_micro_usd,
           CASE WHEN w.active_w > 0 AND w.standby_w > 0 THEN k.wms::numeric * pr.rate_micro_usd ELSE k.wms::numeric END AS weight
    FROM w
    CROSS JOIN LATERAL (VALUES (1, 'session active seconds', w.active_q, w.active_w),
                               (2, 'session standby seconds', w.standby_q, w.standby_w)) AS k(ord, kind, ms, wms)
    LEFT JOIN price_line_rates pr
        ON pr.price_version = w.price_version AND pr.model = cost_rate_model(w.price_version, w.model) AND pr.kind = k.kind
    WHERE w.kind = 'live_voice' AND k.wms > 0
),
split AS MATERIALIZED (
    SELECT * FROM cost_split(ARRAY(SELECT ROW(v.n, v.ord, v.line_item, v.quantity, v.weight, v.cost_micro_usd)::cost_part FROM voice v))
),
lines AS (
    SELECT s.n, s.line_item, s.quantity, s.amount FROM split s
    UNION ALL
    SELECT u.n,
           u.model || CASE u.kind WHEN 'live_voice' THEN ', session seconds'
                                  WHEN 'translation' THEN ', audio seconds'
                                  ELSE ', ' || replace(u.kind, '_', ' ') || ' seconds' END,
           u.active_q + u.standby_q, u.cost_micro_usd
    FROM u WHERE NOT EXISTS (SELECT 1 FROM split s WHERE s.n = u.n)
)
SELECT date_bin('15 minutes', u.occurred_at, timestamptz '2000-01-01 00:00:00+00'), u.tenant_id,
       coalesce(s.api_key_id, ''), u.model, l.line_item, coalesce(s.end_user_hash, ''),
       coalesce(s.tags, '{}'::jsonb), 'milliseconds', l.quantity, l.amount
FROM lines l
JOIN u ON u.n = l.n
LEFT JOIN realtime_sessions s ON s.id = u.session_id
$$;

-- A Live session's delegated Responses response or Decisions decision, in tokens: '<model>, input',
-- '<model>, cached input', '<model>, output' (reasoning is output), split by tokens x rate; a row
-- whose version and model have no registered rates is one '<model>, tokens' line.
CREATE FUNCTION cost_live_token_lines(batch live_token_usage[]) RETURNS SETOF cost_line
LANGUAGE sql STABLE AS $$
WITH u AS MATERIALIZED (
    SELECT t.*, t.ordinality AS n, least(t.cached_input_tokens, t.input_tokens) AS cached
    FROM unnest(batch) WITH ORDINALITY AS t
),
parts AS (
    SELECT u.n, k.ord, u.model || ', ' || k.kind AS line_item, k.tokens AS quantity, u.cost_micro_usd,
           k.tokens::numeric * pr.rate_micro_usd AS weight
    FROM u
    CROSS JOIN LATERAL (VALUES
        (1, 'input', u.input_tokens - u.cached),
        (2, 'cached input', u.cached),
        (3, 'output', u.output_tokens)
    ) AS k(ord, kind, tokens)
    LEFT JOIN price_line_rates pr
        ON pr.price_version = u.price_version AND pr.model = cost_rate_model(u.price_version, u.model) AND pr.kind = k.kind
    WHERE k.tokens > 0
),
split AS MATERIALIZED (
    SELECT * FROM cost_split(ARRAY(SELECT ROW(p.n, p.ord, p.line_item, p.quantity, p.weight, p.cost_micro_usd)::cost_part FROM parts p))
),
lines AS (
    SELECT s.n, s.line_item, s.quantity, s.amount FROM split s
    UNION ALL
    SELECT u.n, u.model || ', tokens', u.input_tokens + u.output_tokens, u.cost_micro_usd
    FROM u WHERE NOT EXISTS (SELECT 1 FROM split s WHERE s.n = u.n)
)
SELECT date_bin('15 minutes', u.occurred_at, timestamptz '2000-01-01 00:00:00+00'), u.tenant_id,
       coalesce(s.api_key_id, ''), u.model, l.line_item, coalesce(s.end_user_hash, ''),
       coalesce(s.tags, '{}'::jsonb), 'tokens', l.quantity, l.amount
FROM lines l
JOIN u ON u.n = l.n
LEFT JOIN realtime_sessions s ON s.id = u.session_id
$$;

-- One writer per Live session at a time (transaction-scoped advisory locks, class 15, taken in
-- one order): a booking committed in parallel with another of its session waits for it here, and
-- the statement below (a new snapshot under READ COMMITTED) then sees it, so the two never count
-- their increase from the same base.
CREATE FUNCTION duration_usage_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    session_key integer;
BEGIN
    FOR session_key IN SELECT DISTINCT hashtext(i.session_id) FROM inserted i WHERE i.kind = 'live_voice' ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(15, session_key);
    END LOOP;
    PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_duration_lines(ARRAY(SELECT n::duration_usage FROM inserted n)) AS l));
    RETURN NULL;
END
$$;

CREATE FUNCTION live_token_usage_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_live_token_lines(ARRAY(SELECT n::live_token_usage FROM inserted n)) AS l));
    RETURN NULL;
END
$$;

-- CREATE TRIGGER locks each table against writes until this migration commits, so every row is
-- either in the backfill below (committed before) or seen by the trigger (inserted after): once.
CREATE TRIGGER duration_usage_rollup AFTER INSERT ON duration_usage
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION duration_usage_rollup();
CREATE TRIGGER live_token_usage_rollup AFTER INSERT ON live_token_usage
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION live_token_usage_rollup();

-- The rows written before this migration (the gateway registers these models' rates only when it
-- starts, so a voice row with both active and standby time is one '<model>, session seconds' line
-- and a token row one '<model>, tokens' line), in chunks of 5000 by primary key so no statement
-- holds a whole table in memory. The triggers above hold both tables' writers until this commits
-- (docs/operations.md#upgrading). The migration runner applies a file once.
DO $$
DECLARE
    chunk duration_usage[];
    tokens live_token_usage[];
    last_d duration_usage;
    last_t live_token_usage;
BEGIN
    LOOP
        chunk := ARRAY(SELECT d FROM duration_usage d
                       WHERE last_d IS NULL OR (d.session_id, d.kind, d.usage_id) > (last_d.session_id, last_d.kind, last_d.usage_id)
                       ORDER BY d.session_id, d.kind, d.usage_id LIMIT 5000);
        EXIT WHEN cardinality(chunk) = 0;
        PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_duration_lines(chunk, true) AS l));
        last_d := chunk[cardinality(chunk)];
    END LOOP;
    LOOP
        tokens := ARRAY(SELECT t FROM live_token_usage t
                        WHERE last_t IS NULL OR (t.session_id, t.kind, t.usage_id) > (last_t.session_id, last_t.kind, last_t.usage_id)
                        ORDER BY t.session_id, t.kind, t.usage_id LIMIT 5000);
        EXIT WHEN cardinality(tokens) = 0;
        PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_live_token_lines(tokens) AS l));
        last_t := tokens[cardinality(tokens)];
    END LOOP;
END
$$;
