"""The `budget_alerts` outbox and the per-tenant webhooks, over Postgres (statements in `sql.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from gateway.alerts import sql


@dataclass(frozen=True, slots=True)
class DueAlert:
    """A crossed threshold claimed for one delivery attempt (`attempts` counts this one)."""

    id: str
    tenant_id: str
    period: str
    period_start: date
    threshold: float
    budget_micro_usd: int
    spent_micro_usd: int
    attempts: int

    def event(self) -> dict[str, Any]:
        """The webhook body (docs/finance.md)."""
        return {
            "type": "budget.threshold_crossed",
            "data": {
                "tenant_id": self.tenant_id,
                "period": self.period,
                "period_start": self.period_start.isoformat(),
                "threshold": self.threshold,
                "budget_micro_usd": self.budget_micro_usd,
                "spent_micro_usd": self.spent_micro_usd,
            },
        }


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: str


class AlertOutbox:
    """Claims, records and lists alert deliveries; every replica may run one against the same table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[DueAlert]:
        rows = await self._pool.fetch(sql.CLAIM_DUE, now, limit, now + lease_s)
        return [DueAlert(**dict(row)) for row in rows]

    async def record_attempt(
        self, alert_id: str, status: str, delivered: bool, retry_at: float | None, now: float
    ) -> None:
        """`retry_at` None on a failure: give up."""
        await self._pool.execute(sql.RECORD_ATTEMPT, alert_id, status, delivered, retry_at, now)

    async def tenant_webhook(self, tenant_id: str) -> Webhook | None:
        row = await self._pool.fetchrow(sql.TENANT_WEBHOOK, tenant_id)
        return None if row is None else Webhook(row["url"], row["secret"])

    async def set_tenant_webhook(self, tenant_id: str, webhook: Webhook) -> None:
        await self._pool.execute(sql.SET_TENANT_WEBHOOK, tenant_id, webhook.url, webhook.secret)

    async def clear_tenant_webhook(self, tenant_id: str) -> bool:
        status: str = await self._pool.execute(sql.CLEAR_TENANT_WEBHOOK, tenant_id)
        return status != "DELETE 0"

    async def deliveries(self, tenant_id: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """The delivery log, newest first, as JSON-ready rows (times in ISO-8601 UTC)."""
        rows = await self._pool.fetch(sql.LIST_ALERTS, tenant_id, limit)
        return [delivery_row(dict(row)) for row in rows]


def delivery_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "organization.budget_alert"}
    for key, value in row.items():
        out[key] = value.isoformat() if isinstance(value, datetime | date) else value
    out["status"] = "delivered" if row["delivered_at"] else "given_up" if row["given_up_at"] else "pending"
    return out
