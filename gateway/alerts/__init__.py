"""Budget alerts that reach people: the outbox, Standard Webhooks signing and the sender.

A settle that crosses a tier's `alert_at` threshold writes a `budget.alert` audit row (and a sweep
of the ledger, `recovery.py`, writes any the settle path lost); the
row claims one `budget_alerts` outbox row per tenant, period and threshold
(migrations/0009_budget_alerts.sql). `AlertSender` delivers the outbox to the tenant's
webhook (or the global one) with retries that keep the `webhook-id`; `AlertLog` reads it
back for `GET /v1/organization/alerts` and `voxgate alerts list` (docs/finance.md).
"""
