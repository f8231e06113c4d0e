-- Cost rollups (docs/finance.md): every view of the Costs API is a sum of these, and these are
-- a sum of the ledger, kept in the same transaction as the ledger's own insert.
--
-- Buckets are UTC 15-minute intervals (every real zone offset is a multiple of 15 minutes, so
-- any zone's hour, day or month is an exact sum of them); never local time.
-- A statement-level trigger on usage_ledger and transcription_usage adds the rows a statement
-- really inserted (its transition table), so the ledger's ON CONFLICT DO NOTHING keeps a retried
-- or replayed write from counting twice.

-- The per-token-kind rates of each price version, so a response's one rounded cost can be split
-- into line items ("gpt-realtime, output audio") that sum to it exactly. The gateway registers its
-- price table at start (gateway/finance/rates.py); a version's rates never change. model '*'
-- holds the ceiling's rates (version '<v>+ceiling').
CREATE TABLE price_line_rates (
    price_version  text NOT NULL,
    model          text NOT NULL,
    kind           text NOT NULL,      -- 'input text', 'cached input audio', 'output audio', ...
    rate_micro_usd bigint NOT NULL CHECK (rate_micro_usd >= 0),   -- per 1M tokens
    PRIMARY KEY (price_version, model, kind)
);

-- Every dimension the Costs API groups or filters by. Absent values are '' (api key, end user)
-- and '{}' (tags) so that the unique key, and so the upsert, sees them as equal.
CREATE TABLE cost_rollup_15m (
    bucket_start     timestamptz NOT NULL CHECK (date_bin('15 minutes', bucket_start, timestamptz '2000-01-01 00:00:00+00') = bucket_start),
    tenant_id        text NOT NULL,
    api_key_id       text NOT NULL,
    model            text NOT NULL,
    line_item        text NOT NULL,
    end_user_hash    text NOT NULL,
    tags             jsonb NOT NULL,
    unit             text NOT NULL,    -- tokens | milliseconds (ConsumedUnit in FOCUS)
    quantity         bigint NOT NULL,
    amount_micro_usd bigint NOT NULL
);
CREATE UNIQUE INDEX cost_rollup_15m_key
    ON cost_rollup_15m (tenant_id, bucket_start, model, line_item, api_key_id, end_user_hash, tags);
CREATE INDEX cost_rollup_15m_time ON cost_rollup_15m (bucket_start);

-- The same sums with fewer dimensions and whole UTC hours: what a query grouped and filtered
-- only by tenant, model and line item reads when every bucket bound is on a UTC hour (UTC and
-- every whole-hour zone). Other queries read cost_rollup_15m.
CREATE TABLE cost_rollup_1h (
    bucket_start     timestamptz NOT NULL CHECK (date_bin('1 hour', bucket_start, timestamptz '2000-01-01 00:00:00+00') = bucket_start),
    tenant_id        text NOT NULL,
    model            text NOT NULL,
    line_item        text NOT NULL,
    unit             text NOT NULL,
    quantity         bigint NOT NULL,
    amount_micro_usd bigint NOT NULL,
    PRIMARY KEY (tenant_id, bucket_start, model, line_item)
);
CREATE INDEX cost_rollup_1h_time ON cost_rollup_1h (bucket_start)
    INCLUDE (tenant_id, model, line_item, unit, quantity, amount_micro_usd);

-- And by whole UTC days: what UTC `1d` and `1mo` queries of those dimensions read.
CREATE TABLE cost_rollup_1d (LIKE cost_rollup_1h INCLUDING ALL);
ALTER TABLE cost_rollup_1d ADD CHECK (date_bin('1 day', bucket_start, timestamptz '2000-01-01 00:00:00+00') = bucket_start);

CREATE TYPE cost_line AS (
    bucket_start  timestamptz,
    tenant_id     text,
    api_key_id    text,
    model         text,
    line_item     text,
    end_user_hash text,
    tags          jsonb,
    unit          text,
    quantity      bigint,
    amount        bigint
);

-- A realtime response's line items: its cost split by token kind in proportion to tokens x rate,
-- by largest remainder (ties to the kind listed first), so the parts sum to cost_micro_usd
-- exactly. A row whose version and model have no registered rates is one '<model>, tokens' line.
CREATE FUNCTION cost_usage_lines(batch usage_ledger[]) RETURNS SETOF cost_line
LANGUAGE sql STABLE AS $$
WITH u AS (
    SELECT r.*, r.ordinality AS n FROM unnest(batch) WITH ORDINALITY AS r
),
rated AS MATERIALIZED (  -- which registered model prices each (version, model): itself, its undated name, or the ceiling
    SELECT v.price_version, v.model,
           (SELECT m.model FROM price_line_rates m
            WHERE m.price_version = v.price_version
              AND m.model IN (v.model, regexp_replace(v.model, '-[0-9]{4}-[0-9]{2}-[0-9]{2}$', ''), '*')
            ORDER BY m.model = v.model DESC, m.model = '*' LIMIT 1) AS rate_model
    FROM (SELECT DISTINCT price_version, model FROM u) AS v
),
parts AS (
    SELECT u.n, u.cost_micro_usd, k.ord, u.model || ', ' || k.kind AS line_item, k.tokens,
           k.tokens::numeric * pr.rate_micro_usd AS num
    FROM u
    JOIN rated ON rated.price_version = u.price_version AND rated.model = u.model AND rated.rate_model IS NOT NULL
    CROSS JOIN LATERAL (VALUES
        (1, 'input text', greatest(u.input_text_tokens - u.cached_text_tokens, 0)),
        (2, 'cached input text', u.cached_text_tokens),
        (3, 'input audio', greatest(u.input_audio_tokens - u.cached_audio_tokens, 0)),
        (4, 'cached input audio', u.cached_audio_tokens),
        (5, 'input image', greatest(u.input_image_tokens - u.cached_image_tokens, 0)),
        (6, 'cached input image', u.cached_image_tokens),
        (7, 'output text', u.output_text_tokens),
        (8, 'output audio', u.output_audio_tokens)
    ) AS k(ord, kind, tokens)
    LEFT JOIN price_line_rates pr
        ON pr.price_version = u.price_version AND pr.model = rated.rate_model AND pr.kind = k.kind
    WHERE k.tokens > 0
),
weighed AS (
    SELECT p.*, sum(p.num) OVER w AS total, count(*) FILTER (WHERE p.num IS NULL) OVER w AS unrated
    FROM parts p WINDOW w AS (PARTITION BY p.n)
),
split AS (
    SELECT s.*, s.cost_micro_usd - sum(s.base) OVER (PARTITION BY s.n) AS leftover,
           row_number() OVER (PARTITION BY s.n ORDER BY s.rem DESC, s.ord) AS place
    FROM (SELECT w.*, div(w.cost_micro_usd * w.num, w.total) AS base, mod(w.cost_micro_usd * w.num, w.total) AS rem
          FROM weighed w WHERE w.total > 0 AND w.unrated = 0) AS s
),
lines AS (
    SELECT s.n, s.line_item, s.tokens AS quantity,
           (s.base + CASE WHEN s.place <= s.leftover THEN 1 ELSE 0 END)::bigint AS amount
    FROM split s
    UNION ALL
    SELECT u.n, u.model || ', tokens', u.total_tokens, u.cost_micro_usd
    FROM u WHERE NOT EXISTS (SELECT 1 FROM split s WHERE s.n = u.n)
)
SELECT date_bin('15 minutes', u.occurred_at, timestamptz '2000-01-01 00:00:00+00'), u.tenant_id,
       coalesce(s.api_key_id, ''), u.model, l.line_item, coalesce(s.end_user_hash, ''),
       coalesce(s.tags, '{}'::jsonb), 'tokens', l.quantity, l.amount
FROM lines l
JOIN u ON u.n = l.n
LEFT JOIN realtime_sessions s ON s.id = u.session_id
$$;

-- A transcription's one line: '<model>, transcription' (tokens) or '<model>, transcription duration'.
CREATE FUNCTION cost_transcription_lines(batch transcription_usage[]) RETURNS SETOF cost_line
LANGUAGE sql STABLE AS $$
SELECT date_bin('15 minutes', t.occurred_at, timestamptz '2000-01-01 00:00:00+00'), t.tenant_id,
       coalesce(s.api_key_id, ''), t.model,
       t.model || CASE t.usage_type WHEN 'duration' THEN ', transcription duration' ELSE ', transcription' END,
       coalesce(s.end_user_hash, ''), coalesce(s.tags, '{}'::jsonb),
       CASE t.usage_type WHEN 'duration' THEN 'milliseconds' ELSE 'tokens' END,
       CASE t.usage_type WHEN 'duration' THEN t.duration_ms
            ELSE t.input_text_tokens + t.input_audio_tokens + t.output_tokens END,
       t.cost_micro_usd
FROM unnest(batch) AS t
LEFT JOIN realtime_sessions s ON s.id = t.session_id
$$;

-- Add lines to every rollup. Keys are written in one order so concurrent writers lock alike.
CREATE FUNCTION cost_rollup_add(lines cost_line[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    coarse record;
BEGIN
    INSERT INTO cost_rollup_15m AS r
        (bucket_start, tenant_id, api_key_id, model, line_item, end_user_hash, tags, unit, quantity, amount_micro_usd)
    SELECT bucket_start, tenant_id, api_key_id, model, line_item, end_user_hash, tags, min(unit), sum(quantity), sum(amount)
    FROM unnest(lines)
    GROUP BY tenant_id, bucket_start, model, line_item, api_key_id, end_user_hash, tags
    ORDER BY tenant_id, bucket_start, model, line_item, api_key_id, end_user_hash, tags
    ON CONFLICT (tenant_id, bucket_start, model, line_item, api_key_id, end_user_hash, tags) DO UPDATE
    SET quantity = r.quantity + excluded.quantity, amount_micro_usd = r.amount_micro_usd + excluded.amount_micro_usd;

    -- The hourly and daily copies: the same sums over fewer dimensions and a coarser UTC grain.
    FOR coarse IN SELECT * FROM (VALUES ('cost_rollup_1h', interval '1 hour'), ('cost_rollup_1d', interval '1 day')) AS c (tbl, grain)
    LOOP
        EXECUTE format($sql$
            INSERT INTO %I AS r (bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd)
            SELECT date_bin($2, bucket_start, timestamptz '2000-01-01 00:00:00+00') AS b, tenant_id, model, line_item,
                   min(unit), sum(quantity), sum(amount)
            FROM unnest($1)
            GROUP BY tenant_id, b, model, line_item
            ORDER BY tenant_id, b, model, line_item
            ON CONFLICT (tenant_id, bucket_start, model, line_item) DO UPDATE
            SET quantity = r.quantity + excluded.quantity, amount_micro_usd = r.amount_micro_usd + excluded.amount_micro_usd
        $sql$, coarse.tbl) USING lines, coarse.grain;
    END LOOP;
END
$$;

CREATE FUNCTION usage_ledger_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_usage_lines(ARRAY(SELECT n::usage_ledger FROM inserted n)) AS l));
    RETURN NULL;
END
$$;

CREATE FUNCTION transcription_usage_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cost_rollup_add(ARRAY(SELECT l FROM cost_transcription_lines(ARRAY(SELECT n::transcription_usage FROM inserted n)) AS l));
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_ledger_rollup AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION usage_ledger_rollup();
CREATE TRIGGER transcription_usage_rollup AFTER INSERT ON transcription_usage
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION transcription_usage_rollup();

-- The ledger written before this migration (no rates are registered yet: one line per response).
SELECT cost_rollup_add(ARRAY(SELECT l FROM cost_usage_lines(ARRAY(SELECT u FROM usage_ledger u)) AS l));
SELECT cost_rollup_add(ARRAY(SELECT l FROM cost_transcription_lines(ARRAY(SELECT t FROM transcription_usage t)) AS l));
