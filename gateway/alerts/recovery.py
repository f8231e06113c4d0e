"""The ledger sweep: budget alerts the settle path could not record, recovered from the ledger.

The settle path detects a crossing in Redis's atomic settle and records it as a `budget.alert`
audit row, which the ledger writer commits later and which claims the outbox row
(migrations/0009_budget_alerts.sql). A process killed between the two loses the alert: the
response's ledger row is committed (or journaled and replayed) and Redis counts its spend, so
no later settle sees the threshold crossed again.

`AlertSweep` makes the crossing durable with the ledger instead: for each tenant whose policy
in force has a budget with thresholds the outbox does not hold yet for the current UTC day and
month, it reads that day's and month's spend, and for every such threshold the spend has reached
writes that same audit row. The trigger and the outbox's unique key `(tenant_id, period,
period_start, threshold)` keep it once, whichever of the settle path, a sweep on any replica, or a
replay gets there first. Each replica's `AlertSender` runs it at start and every
`VOXGATE_ALERT_SWEEP_SECONDS` (0: never). The period an hour ago is swept too, so a crossing just
before midnight is not left behind. One replica sweeps at a time: a sweep runs in one transaction
holding a transaction-scoped advisory lock (`SWEEP_LOCK`), and a replica that finds it taken skips
its turn (the sweep under way covers every tenant), so N replicas do not each read every
tenant's policy on every tick. Safe through PgBouncer in transaction mode (the lock ends with the
transaction).

The spend is read from the daily cost rollup (`cost_rollup_1d`, migrations 0008 and 0015), not
from the raw ledger: every billed table (`gateway.ledger.sql.COST_TABLES`) adds each row's exact
cost to it in the statement that inserts the row, so its UTC-day sums equal the ledger's to the
micro-dollar and commit with it. One index range scan per period covers every tenant, however
many ledger rows the month holds (bench/alert_sweep.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

import asyncpg

from gateway.alerts import sql
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantNotFound
from policies.budget import BudgetLimits, BudgetState, crossed_alerts

log = logging.getLogger("voxgate.alerts")

LOOKBACK_SECONDS: Final = 3600.0  # the periods holding (now - this) are swept as well
# pg_try_advisory_xact_lock(int, int) keys: class 9 (migrations/0009_budget_alerts.sql), object 1.
SWEEP_LOCK: Final = (9, 1)


@dataclass(frozen=True, slots=True)
class Periods:
    """One UTC day and the UTC month holding it."""

    day: date
    month: date

    @classmethod
    def at(cls, moment: float) -> Periods:
        day = datetime.fromtimestamp(moment, UTC).date()
        return cls(day, day.replace(day=1))

    def bounds(self) -> tuple[datetime, datetime, datetime, datetime]:
        """The month's start and end, then the day's start and end (UTC, half-open)."""
        month = datetime(self.month.year, self.month.month, 1, tzinfo=UTC)
        day = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)
        return month, (month + timedelta(days=32)).replace(day=1), day, day + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SweptAlert:
    tenant_id: str
    period: str
    period_start: date
    threshold: float
    budget_micro_usd: int
    spent_micro_usd: int


class AlertSweep:
    """Compares the ledger's period spend with each tenant's thresholds; records missed crossings."""

    def __init__(self, pool: asyncpg.Pool, policies: PolicyStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._policies = policies
        self._clock = clock

    async def run(self) -> list[SweptAlert]:
        """One sweep; returns the crossings it found missing and wrote (another writer may have won).
        Returns [] at once while another replica's sweep holds the lock."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(sql.TRY_SWEEP_LOCK, *SWEEP_LOCK):
                return []
            return await self._sweep(conn)

    async def _sweep(self, conn: asyncpg.pool.PoolConnectionProxy) -> list[SweptAlert]:
        now = self._clock.time()
        periods = sorted({Periods.at(now - LOOKBACK_SECONDS), Periods.at(now)}, key=lambda p: p.day)
        claimed = {
            (r["tenant_id"], r["period"], r["period_start"], r["threshold"])
            for r in await conn.fetch(sql.CLAIMED_SINCE, periods[0].month)
        }
        open_limits: dict[str, BudgetLimits] = {}
        for row in await conn.fetch(sql.TENANT_IDS):
            limits = await self._open_limits(row["id"], periods, claimed)
            if limits is not None:
                open_limits[row["id"]] = limits
        missing: list[SweptAlert] = []
        if open_limits:
            missing = await self._crossings(conn, open_limits, periods, claimed)
        for alert in missing:
            detail = {
                "period": alert.period,
                "period_start": alert.period_start.isoformat(),
                "threshold": alert.threshold,
                "budget_micro_usd": alert.budget_micro_usd,
                "spent_micro_usd": alert.spent_micro_usd,
                "source": "ledger",
            }
            await conn.execute(sql.INSERT_SWEPT_ALERT, now, alert.tenant_id, json.dumps(detail))
        if missing:
            log.warning("budget alerts: %d crossing(s) recovered from the ledger", len(missing))
        return missing

    async def _open_limits(
        self, tenant_id: str, periods: list[Periods], claimed: set[tuple[str, str, date, float]]
    ) -> BudgetLimits | None:
        """The tenant's budget when some threshold in `periods` is not in the outbox yet, else None."""
        try:
            policy = (await self._policies.effective(tenant_id)).policy
        except TenantNotFound:  # deleted since the list was read
            return None
        limits = BudgetLimits.from_policy(policy.budget)
        marks = [
            (window, start, threshold)
            for period in periods
            for window, limit, start in (
                ("day", limits.daily_micro_usd, period.day),
                ("month", limits.monthly_micro_usd, period.month),
            )
            if limit is not None
            for threshold in limits.alert_at
        ]
        if all((tenant_id, *mark) in claimed for mark in marks):  # no budget, or every threshold recorded
            return None
        return limits

    async def _crossings(
        self,
        conn: asyncpg.pool.PoolConnectionProxy,
        open_limits: dict[str, BudgetLimits],
        periods: list[Periods],
        claimed: set[tuple[str, str, date, float]],
    ) -> list[SweptAlert]:
        """The crossings, in `periods`, that the spend shows and the outbox lacks, for these tenants."""
        found: dict[tuple[str, str, date, float], SweptAlert] = {}
        tenants = sorted(open_limits)
        for period in periods:
            month, month_end, day, _ = period.bounds()
            spend = {r["tenant_id"]: r for r in await conn.fetch(sql.PERIOD_SPEND, tenants, month, month_end, day)}
            for tenant_id, limits in open_limits.items():
                row = spend.get(tenant_id)
                if row is None:  # nothing billed this month
                    continue
                state = BudgetState(spent_day=row["day"], spent_month=row["month"])
                for alert in crossed_alerts(BudgetState(), state, limits):
                    start = period.day if alert.window == "day" else period.month
                    key = (tenant_id, alert.window, start, alert.threshold)
                    if key not in claimed:
                        found[key] = SweptAlert(
                            tenant_id, alert.window, start, alert.threshold, alert.limit, alert.spent
                        )
        return list(found.values())
