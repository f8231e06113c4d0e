"""Every statement on `budget_alerts` and `tenant_alert_webhooks` (migrations/0009_budget_alerts.sql)."""

from __future__ import annotations

from typing import Final


def claim_due(table: str, key: str, returning: str) -> str:
    """Take up to $2 due rows of an outbox `table` (keyed by `key`) for one attempt each, leasing
    them until $3 so no other replica sends them meanwhile; a sender that dies mid-attempt lets its
    lease run out, and the row is tried again (same webhook-id). $1 is now. Shared by the budget
    alerts and the SIP call deliveries, whose tables carry the same delivery columns."""
    return f"""
UPDATE {table} o
SET claimed_until = to_timestamp($3), attempts = o.attempts + 1
FROM (
    SELECT {key} FROM {table}
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= to_timestamp($1)
      AND (claimed_until IS NULL OR claimed_until <= to_timestamp($1))
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) due
WHERE o.{key} = due.{key}
RETURNING {returning}
"""


CLAIM_DUE: Final = claim_due(
    "budget_alerts",
    "id",
    "o.id, o.tenant_id, o.period, o.period_start, o.threshold, o.budget_micro_usd, o.spent_micro_usd, o.attempts",
)

TENANT_WEBHOOK: Final = "SELECT url, secret FROM tenant_alert_webhooks WHERE tenant_id = $1"

# $2: the attempt's status; $3: delivered (bool); $4: the next attempt (NULL: give up). $5 is now.
RECORD_ATTEMPT: Final = """
UPDATE budget_alerts
SET last_status = $2, last_attempt_at = to_timestamp($5), claimed_until = NULL,
    delivered_at = CASE WHEN $3 THEN to_timestamp($5) END,
    given_up_at = CASE WHEN NOT $3 AND $4::float8 IS NULL THEN to_timestamp($5) END,
    next_attempt_at = COALESCE(to_timestamp($4::float8), next_attempt_at)
WHERE id = $1
"""

# The delivery log, newest first; $1 NULL for every tenant.
LIST_ALERTS: Final = """
SELECT id, tenant_id, period, period_start, threshold, budget_micro_usd, spent_micro_usd,
       crossed_at, attempts, last_status, last_attempt_at, delivered_at, given_up_at, next_attempt_at
FROM budget_alerts
WHERE ($1::text IS NULL OR tenant_id = $1)
ORDER BY crossed_at DESC, id
LIMIT $2
"""

SET_TENANT_WEBHOOK: Final = """
INSERT INTO tenant_alert_webhooks (tenant_id, url, secret) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret, updated_at = now()
"""

CLEAR_TENANT_WEBHOOK: Final = "DELETE FROM tenant_alert_webhooks WHERE tenant_id = $1"

# --- the ledger sweep (gateway.alerts.recovery) ---------------------------------------------

# Each tenant's (of $1) spend in the UTC month [$2, $3) and on the UTC day starting at $4 within
# it, from the daily cost rollup (migrations/0008_cost_rollups.sql, 0015): every table of
# gateway.ledger.sql.COST_TABLES adds each row's exact cost to it in the inserting statement, so
# these are the ledger's sums (tests/test_alerts_recovery.py checks that every one of those tables
# feeds it). An index range scan on the rollup's (tenant_id, bucket_start, ...) key: at most a few
# rows per tenant, model and line item a day, whatever the ledger's size. No row: no spend.
PERIOD_SPEND: Final = """
SELECT tenant_id,
       coalesce(sum(amount_micro_usd) FILTER (WHERE bucket_start = $4), 0)::bigint AS day,
       coalesce(sum(amount_micro_usd), 0)::bigint AS month
FROM cost_rollup_1d
WHERE tenant_id = ANY($1::text[]) AND bucket_start >= $2 AND bucket_start < $3
GROUP BY tenant_id
"""

TENANT_IDS: Final = "SELECT id FROM tenants ORDER BY id"

# One sweep at a time across replicas ($1, $2: gateway.alerts.recovery.SWEEP_LOCK); held to commit.
TRY_SWEEP_LOCK: Final = "SELECT pg_try_advisory_xact_lock($1, $2)"

# The crossings already claimed for periods starting on or after $1.
CLAIMED_SINCE: Final = """
SELECT tenant_id, period, period_start, threshold FROM budget_alerts WHERE period_start >= $1
"""

# A crossing the settle path did not record: the same `budget.alert` audit row it writes, so the
# same trigger claims its outbox row once (migrations/0009_budget_alerts.sql, 0017), or drops the row
# when another replica, the settle path or an earlier sweep claimed it first.
INSERT_SWEPT_ALERT: Final = """
INSERT INTO audit_log (at, actor, tenant_id, action, detail)
VALUES (to_timestamp($1), 'voxgate', $2, 'budget.alert', $3::jsonb)
"""
