"""Every statement the Costs API runs, over the rollups of migrations/0008_cost_rollups.sql and
0018_cost_rollup_15m_slim.sql.

Bucket bounds arrive as one sorted `timestamptz[]` ($1: `n + 1` bounds for `n` buckets) and
`width_bucket` numbers each rollup row's bucket, so a local day in any zone is a range of UTC
quarter hours. A grouping that is off is a NULL column: one statement serves every `group_by`.
"""

from __future__ import annotations

from typing import Final

# $2 tenants, $3 api keys, $4 models (NULL: all); $5..$9 group by tenant, line item, model, key,
# end user; $10 the tag key grouped by (NULL: none); $11 group by the whole tag set (FOCUS).
COSTS_15M: Final = """
SELECT width_bucket(r.bucket_start, $1::timestamptz[]) AS bucket,
       CASE WHEN $5 THEN r.tenant_id END AS project_id,
       CASE WHEN $6 THEN r.line_item END AS line_item,
       CASE WHEN $7 THEN r.model END AS model,
       CASE WHEN $8 THEN r.api_key_id END AS api_key_id,
       CASE WHEN $9 THEN r.end_user_hash END AS end_user,
       $10::text || '=' || (r.tags ->> $10::text) AS tag,
       CASE WHEN $11 THEN r.tags END AS tags,
       CASE WHEN $6 THEN min(r.unit) END AS unit,
       sum(r.quantity)::bigint AS quantity,
       sum(r.amount_micro_usd)::bigint AS amount_micro_usd
FROM cost_rollup_15m r
WHERE r.bucket_start >= ($1::timestamptz[])[1]
  AND r.bucket_start < ($1::timestamptz[])[array_length($1::timestamptz[], 1)]
  AND ($2::text[] IS NULL OR r.tenant_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR r.api_key_id = ANY($3::text[]))
  AND ($4::text[] IS NULL OR r.model = ANY($4::text[]))
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
"""

# The hourly rollup: tenant, model and line item only ($2 tenants, $3 models; $5..$7 group by
# tenant, line item, model). $4 lists the UTC hours a bucket bound cuts (a zone at :30 or :45):
# those hours are read by the quarter from the slim 15-minute rollup (the same dimensions,
# migrations/0018), every other hour from this one.
COSTS_1H: Final = """
SELECT width_bucket(x.bucket_start, $1::timestamptz[]) AS bucket,
       CASE WHEN $5 THEN x.tenant_id END AS project_id,
       CASE WHEN $6 THEN x.line_item END AS line_item,
       CASE WHEN $7 THEN x.model END AS model,
       NULL::text AS api_key_id, NULL::text AS end_user, NULL::text AS tag, NULL::jsonb AS tags,
       CASE WHEN $6 THEN min(x.unit) END AS unit,
       sum(x.quantity)::bigint AS quantity,
       sum(x.amount_micro_usd)::bigint AS amount_micro_usd
FROM (
    SELECT r.bucket_start, r.tenant_id, r.model, r.line_item, r.unit, r.quantity, r.amount_micro_usd
    FROM cost_rollup_1h r
    WHERE r.bucket_start >= ($1::timestamptz[])[1]
      AND r.bucket_start < ($1::timestamptz[])[array_length($1::timestamptz[], 1)]
      AND r.bucket_start <> ALL($4::timestamptz[])
      AND ($2::text[] IS NULL OR r.tenant_id = ANY($2::text[]))
      AND ($3::text[] IS NULL OR r.model = ANY($3::text[]))
    UNION ALL
    SELECT q.bucket_start, q.tenant_id, q.model, q.line_item, q.unit, q.quantity, q.amount_micro_usd
    FROM unnest($4::timestamptz[]) AS cut (hour)
    JOIN cost_rollup_15m_slim q ON q.bucket_start >= cut.hour AND q.bucket_start < cut.hour + interval '1 hour'
    WHERE ($2::text[] IS NULL OR q.tenant_id = ANY($2::text[]))
      AND ($3::text[] IS NULL OR q.model = ANY($3::text[]))
) AS x
WHERE x.bucket_start >= ($1::timestamptz[])[1]
  AND x.bucket_start < ($1::timestamptz[])[array_length($1::timestamptz[], 1)]
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

# A price version's rates never change: registering one twice is a no-op.
INSERT_RATE: Final = """
INSERT INTO price_line_rates (price_version, model, kind, rate_micro_usd)
VALUES ($1, $2, $3, $4)
ON CONFLICT (price_version, model, kind) DO NOTHING
"""

TENANT_NAMES: Final = "SELECT id, name FROM tenants WHERE id = ANY($1::text[])"

# The daily rollup, the same way: for bounds on whole UTC days (UTC `1d` and `1mo`; no hour is cut).
COSTS_1D: Final = COSTS_1H.replace("FROM cost_rollup_1h r", "FROM cost_rollup_1d r")

# Enough memory to group a month of rollup rows in a hash table; a plan for the actual bounds
# (a generic plan cannot see how narrow a range is, and scans whole rollups); and no JIT.
QUERY_SETTINGS: Final = (
    "SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off"
)
