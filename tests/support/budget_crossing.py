"""Crossing a tenant's budget thresholds through the real settle path, and a database of one's own.

Tests of the alert sender use their own database: every gateway polls the outbox of the
database it serves, and the session's shared gateway would otherwise take their alerts.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger.writer import LedgerWriter
from gateway.livestate import LiveStateBackend, MemoryLiveState
from gateway.session.effects import SessionEffects
from gateway.session.enforcement import Enforcement
from gateway.settings import LedgerSettings
from gateway.storage.migrations import apply_migrations
from policies.actions import RecordSpend
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.conftest import create_database, drop_database

DAILY_MICRO_USD = 10_000


def daily_policy(*alert_at: float) -> TenantPolicy:
    return TenantPolicy(budget=BudgetPolicy(daily_micro_usd=DAILY_MICRO_USD, alert_at=tuple(alert_at)))


@asynccontextmanager
async def own_database() -> AsyncIterator[str]:
    """A migrated database for one test, dropped afterwards."""
    name, dsn = await create_database()
    await apply_migrations(dsn)
    try:
        yield dsn
    finally:
        await drop_database(name)


class Replica:
    """One gateway's worth of settle path: a live state, a ledger writer and enforcement, all real."""

    def __init__(self, pool: asyncpg.Pool, live_state: LiveStateBackend | None = None, clock: Clock = SYSTEM_CLOCK):
        self.clock = clock
        self.ledger = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01, batch_records=3))
        self.enforcement = Enforcement(
            live_state or MemoryLiveState(), None, pool, self.ledger, DEFAULT_PRICE_TABLE, lambda: ()
        )
        self.ledger.start()

    async def close(self) -> None:
        assert await self.ledger.drain(10)
        await self.ledger.stop(timeout=5)


async def settle_at_once(
    replicas: list[Replica], tenant_id: str, policy: TenantPolicy, spends: int, amount: int
) -> None:
    """`spends` sessions, spread over `replicas`, each settling `amount` micro-USD at the same moment."""
    effects = [
        SessionEffects(replicas[i % len(replicas)].enforcement, tenant_id, f"vgs_{i}", policy, clock=replicas[0].clock)
        for i in range(spends)
    ]
    for one in effects:
        one.submit(RecordSpend(secrets.token_hex(8), amount))
    await asyncio.gather(*(_run(one) for one in effects))
    for replica in replicas:
        assert await replica.ledger.drain(10)


async def _run(effects: SessionEffects) -> None:
    effects.start(owner=None)  # type: ignore[arg-type]  # spends need no reservation answers
    await effects.stop(timeout=10)
