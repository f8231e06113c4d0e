"""A budget threshold is recorded once per tenant, period and threshold, however many responses
settle at once and on however many replicas (docs/finance.md, "Budget alerts")."""

from __future__ import annotations

import json
import secrets

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.livestate import LiveState
from tests.conftest import REDIS_URL
from tests.support.budget_crossing import DAILY_MICRO_USD, Replica, daily_policy, settle_at_once
from tests.support.harness import make_tenant

pytestmark = pytest.mark.e2e

POLICY = daily_policy(0.5, 0.8, 1.0)


async def test_concurrent_settles_on_two_replicas_record_each_threshold_once(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "alerts-once")
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    clients = [aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)]
    replicas = [Replica(pg_pool, LiveState(client, prefix, f"replica-{i}")) for i, client in enumerate(clients)]
    try:
        # 40 spends of 1 % each: 40 % of the day's budget, crossing nothing.
        await settle_at_once(replicas, tenant.tenant_id, POLICY, 40, DAILY_MICRO_USD // 100)
        # 40 more at once: crossing 50 % and 80 %, each inside a crowd of racing settles.
        await settle_at_once(replicas, tenant.tenant_id, POLICY, 40, DAILY_MICRO_USD // 100)
    finally:
        for replica in replicas:
            await replica.close()
        for client in clients:
            await client.aclose()
    audit = await pg_pool.fetch(
        "SELECT detail FROM audit_log WHERE tenant_id = $1 AND action = 'budget.alert'", tenant.tenant_id
    )
    assert len(audit) == 2, [row["detail"] for row in audit]
    assert sorted(json.loads(row["detail"])["threshold"] for row in audit) == [0.5, 0.8]
    outbox = await pg_pool.fetch(
        "SELECT period, threshold, budget_micro_usd, spent_micro_usd FROM budget_alerts WHERE tenant_id = $1"
        " ORDER BY threshold",
        tenant.tenant_id,
    )
    assert [(r["period"], r["threshold"], r["budget_micro_usd"]) for r in outbox] == [
        ("day", 0.5, DAILY_MICRO_USD),
        ("day", 0.8, DAILY_MICRO_USD),
    ]
    # The spend reported is the total just after the settle that crossed: at or past the mark.
    assert outbox[0]["spent_micro_usd"] >= DAILY_MICRO_USD // 2
    assert outbox[1]["spent_micro_usd"] >= DAILY_MICRO_USD * 8 // 10


async def test_a_replayed_crossing_adds_no_audit_row_and_no_alert(pg_pool: asyncpg.Pool) -> None:
    """The ledger may write an audit row twice (queue and journal): the second is dropped."""
    tenant = await make_tenant(pg_pool, "alerts-replay")
    detail = json.dumps(
        {
            "period": "month",
            "period_start": "2026-12-01",
            "threshold": 0.5,
            "budget_micro_usd": 10,
            "spent_micro_usd": 5,
        }
    )
    for _ in range(2):
        await pg_pool.execute(
            "INSERT INTO audit_log (actor, tenant_id, action, detail)"
            " VALUES ('voxgate', $1, 'budget.alert', $2::jsonb)",
            tenant.tenant_id,
            detail,
        )
    counts = await pg_pool.fetchrow(
        "SELECT (SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'budget.alert') AS audit,"
        " (SELECT count(*) FROM budget_alerts WHERE tenant_id = $1) AS outbox",
        tenant.tenant_id,
    )
    assert (counts["audit"], counts["outbox"]) == (1, 1)
