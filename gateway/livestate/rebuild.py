"""Rebuild a tenant's day/month spend from the Postgres ledger after Redis lost it.

Redis records `since`: the first moment after a flush (or first use) from which every settle
reached Redis. The ledger supplies what happened before it: rows of the window with
`occurred_at < since`. The script adds that sum only to windows not yet known, so rebuilding
twice, or concurrently on two replicas, adds it once, and settles that raced with the rebuild
are kept (never overwritten).
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from gateway.ledger.sql import SPEND_BEFORE_CUTOFF, timestamp
from gateway.livestate.budgets import SpendState
from gateway.livestate.keys import BudgetWindows

_ATTEMPTS = 3


class SpendHistory(Protocol):
    """What a rebuild needs from a live-state backend."""

    async def spend_with_marker(self, tenant_id: str, now: float) -> tuple[SpendState, str]: ...

    async def add_history(self, tenant_id: str, since: str, day_sum: int, month_sum: int, now: float) -> bool: ...

    async def spend(self, tenant_id: str, now: float) -> SpendState: ...


async def ledger_spend(pool: asyncpg.Pool, tenant_id: str, now: float, cutoff: float) -> tuple[int, int]:
    """(day, month) micro-USD of the tenant's ledger rows in the windows of `now`, before `cutoff`."""
    w = BudgetWindows.at(now)
    row = await pool.fetchrow(
        SPEND_BEFORE_CUTOFF, tenant_id, timestamp(w.month_start), timestamp(w.day_start), timestamp(cutoff)
    )
    assert row is not None
    return int(row["day"]), int(row["month"])


async def rebuild_spend(budgets: SpendHistory, pool: asyncpg.Pool, tenant_id: str, now: float) -> SpendState:
    """Make the tenant's counters for the day and month of `now` known; returns the result."""
    for _ in range(_ATTEMPTS):
        state, since = await budgets.spend_with_marker(tenant_id, now)
        if state.known:
            return state
        day_sum, month_sum = await ledger_spend(pool, tenant_id, now, float(since))
        if await budgets.add_history(tenant_id, since, day_sum, month_sum, now):
            return await budgets.spend(tenant_id, now)
    return await budgets.spend(tenant_id, now)  # Redis keeps being flushed: report it as unknown
