"""Budget alerts are durable with the ledger: a crossing whose `budget.alert` row a dead process never
wrote is recovered from the ledger's period spend, once, however many sweeps and settles race
(docs/finance.md, "Budget alerts")."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.alerts.outbox import AlertOutbox
from gateway.alerts.recovery import SWEEP_LOCK, AlertSweep
from gateway.alerts.sender import AlertSender
from gateway.alerts.signing import new_secret, verify
from gateway.ledger.records import DurationRecord, LiveTokenRecord, SessionStarted
from gateway.ledger.sql import COST_TABLES
from gateway.ledger.writer import LedgerWriter
from gateway.livestate import LiveState
from gateway.settings import AlertSettings, LedgerSettings, Settings
from gateway.storage.policy_store import PolicyStore
from policies.actions import TranscriptionRecord
from tests.conftest import REDIS_URL
from tests.support.budget_crossing import DAILY_MICRO_USD, Replica, daily_policy, own_database, settle_at_once
from tests.support.harness import make_tenant
from tests.support.records import usage_record
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    # A database of its own: the session's shared gateway sweeps (and delivers from) the shared one.
    async with own_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=6)
        yield pool
        await pool.close()


async def commit_responses(pool: asyncpg.Pool, tenant_id: str, costs: list[int]) -> None:
    """Responses committed to the ledger by the real writer, and nothing after: no settle, no audit row."""
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
    writer.start()
    session_id = f"vgs_{secrets.token_hex(8)}"
    now = time.time()
    writer.submit(SessionStarted(session_id, tenant_id, None, "websocket", "realtime", "gpt-realtime", None, "t", now))
    for cost in costs:
        await writer.submit_durable(usage_record(session_id, tenant_id, f"resp_{secrets.token_hex(8)}", now, cost))
    assert await writer.drain(10)
    await writer.stop(timeout=5)


async def ledger_spend_today(pool: asyncpg.Pool, tenant_id: str) -> int:
    """The day's spend, summed here from the realtime ledger's rows (the only table these tests write)."""
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spent: int = await pool.fetchval(
        "SELECT coalesce(sum(cost_micro_usd), 0)::bigint FROM usage_ledger WHERE tenant_id = $1 AND occurred_at >= $2",
        tenant_id,
        day,
    )
    return spent


async def alert_counts(pool: asyncpg.Pool, tenant_id: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'budget.alert') AS audit,"
        " (SELECT count(*) FROM budget_alerts WHERE tenant_id = $1) AS outbox",
        tenant_id,
    )
    return row["audit"], row["outbox"]


async def test_a_crossing_only_the_ledger_holds_is_recorded_once(pool: asyncpg.Pool) -> None:
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep")
    budget = {"daily_usd": "1", "monthly_usd": "10", "alert_at": [0.5, 0.8]}
    await store.set(tenant.tenant_id, {"budget": budget}, actor="test")
    # 0.3 + 0.35 = 0.65 of the day's $1: past 50 %, not 80 %; 6.5 % of the month's $10.
    await commit_responses(pool, tenant.tenant_id, [300_000, 350_000])
    assert await alert_counts(pool, tenant.tenant_id) == (0, 0)  # the settle never happened

    sweep = AlertSweep(pool, store)
    (found,) = await sweep.run()
    spent = await ledger_spend_today(pool, tenant.tenant_id)
    assert spent == 650_000
    today = datetime.now(UTC).date()
    assert (found.tenant_id, found.period, found.period_start, found.threshold) == (tenant.tenant_id, "day", today, 0.5)
    assert (found.budget_micro_usd, found.spent_micro_usd) == (1_000_000, spent)
    row = await pool.fetchrow("SELECT * FROM budget_alerts WHERE tenant_id = $1", tenant.tenant_id)
    assert (row["period"], row["period_start"], row["threshold"], row["spent_micro_usd"]) == ("day", today, 0.5, spent)
    assert row["next_attempt_at"] is not None and row["delivered_at"] is None  # due for the sender

    assert await sweep.run() == []  # recorded: the next sweep finds nothing missing
    assert await alert_counts(pool, tenant.tenant_id) == (1, 1)

    # Past 80 % of the day: only that threshold is new.
    await commit_responses(pool, tenant.tenant_id, [200_000])
    assert [(a.period, a.threshold) for a in await sweep.run()] == [("day", 0.8)]
    assert await alert_counts(pool, tenant.tenant_id) == (2, 2)


async def test_racing_sweeps_record_a_crossing_once(pool: asyncpg.Pool) -> None:
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep-race")
    await store.set(tenant.tenant_id, {"budget": {"daily_usd": "1", "alert_at": [0.5]}}, actor="test")
    await commit_responses(pool, tenant.tenant_id, [600_000])
    # Eight replicas sweeping at the same moment, each seeing the crossing missing.
    await asyncio.gather(*(AlertSweep(pool, store).run() for _ in range(8)))
    assert await alert_counts(pool, tenant.tenant_id) == (1, 1)


async def test_one_replica_sweeps_at_a_time(pool: asyncpg.Pool) -> None:
    """While another replica's sweep holds the sweep lock, a sweep skips its turn (reads no policy,
    writes nothing); the next one, with the lock free, records the crossing."""
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep-lock")
    await store.set(tenant.tenant_id, {"budget": {"daily_usd": "1", "alert_at": [0.5]}}, actor="test")
    await commit_responses(pool, tenant.tenant_id, [600_000])
    async with pool.acquire() as other, other.transaction():
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", *SWEEP_LOCK)  # a sweep under way
        assert await AlertSweep(pool, store).run() == []
        assert await alert_counts(pool, tenant.tenant_id) == (0, 0)
    assert [(a.tenant_id, a.threshold) for a in await AlertSweep(pool, store).run()] == [(tenant.tenant_id, 0.5)]
    assert await alert_counts(pool, tenant.tenant_id) == (1, 1)


async def test_a_tenant_without_a_budget_or_below_every_threshold_gets_nothing(pool: asyncpg.Pool) -> None:
    store = PolicyStore(pool, {}, None)
    unlimited = await make_tenant(pool, "sweep-unlimited")
    below = await make_tenant(pool, "sweep-below")
    await store.set(below.tenant_id, {"budget": {"daily_usd": "1", "alert_at": [0.5]}}, actor="test")
    await commit_responses(pool, unlimited.tenant_id, [5_000_000])
    await commit_responses(pool, below.tenant_id, [499_999])  # one micro-dollar short of the mark
    assert await AlertSweep(pool, store).run() == []
    await commit_responses(pool, below.tenant_id, [1])
    assert [(a.tenant_id, a.threshold) for a in await AlertSweep(pool, store).run()] == [(below.tenant_id, 0.5)]


async def ledger_rows(replicas: list[Replica], tenant_id: str, count: int, cost: int) -> None:
    """`count` responses' ledger rows, spread over the replicas' writers, submitted at once."""
    now = time.time()
    sessions = [f"vgs_{secrets.token_hex(8)}" for _ in replicas]
    for replica, session_id in zip(replicas, sessions, strict=True):
        replica.ledger.submit(
            SessionStarted(session_id, tenant_id, None, "websocket", "realtime", "gpt-realtime", None, "t", now)
        )
    durable = [
        replicas[i % len(replicas)].ledger.submit_durable(
            usage_record(sessions[i % len(replicas)], tenant_id, f"resp_{secrets.token_hex(8)}", now, cost)
        )
        for i in range(count)
    ]
    await asyncio.gather(*durable)


async def test_a_burst_of_settles_racing_sweeps_delivers_each_threshold_exactly_once(pool: asyncpg.Pool) -> None:
    """Two replicas settle 120 spends at once while sweeps run on both; their senders deliver to one receiver."""
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep-burst")
    await store.set(tenant.tenant_id, {"budget": {"daily_usd": "0.01", "alert_at": [0.5, 0.8, 1.0]}}, actor="test")
    policy = daily_policy(0.5, 0.8, 1.0)
    assert policy.budget.daily_micro_usd == DAILY_MICRO_USD == 10_000  # the store's policy, as the settles see it
    secret = new_secret()
    receiver = await WebhookReceiver().start()
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    clients = [aioredis.from_url(REDIS_URL), aioredis.from_url(REDIS_URL)]
    replicas = [Replica(pool, LiveState(client, prefix, f"replica-{i}")) for i, client in enumerate(clients)]
    settings = AlertSettings(receiver.url, secret, poll_seconds=0.05)
    senders = [AlertSender(AlertOutbox(pool), settings, sweep=AlertSweep(pool, store)) for _ in replicas]
    for sender in senders:
        sender.start()
    try:

        async def sweep_meanwhile() -> None:
            for _ in range(20):
                await asyncio.gather(AlertSweep(pool, store).run(), AlertSweep(pool, store).run())
                await asyncio.sleep(0.01)

        # 120 responses of 1 % each, all at once, across both replicas: each one's ledger row and its
        # Redis settle, as a session does; 0.5, 0.8 and 1.0 are crossed inside the crowd, while sweeps
        # compare the ledger with the thresholds.
        await asyncio.gather(
            ledger_rows(replicas, tenant.tenant_id, 120, DAILY_MICRO_USD // 100),
            settle_at_once(replicas, tenant.tenant_id, policy, 120, DAILY_MICRO_USD // 100),
            sweep_meanwhile(),
        )
        await AlertSweep(pool, store).run()  # and one after everything committed
        deliveries = await receiver.wait_for(3)
        await asyncio.sleep(1.0)  # many more polls of both senders: nothing else arrives
    finally:
        for sender in senders:
            await sender.stop()
        for replica in replicas:
            await replica.close()
        for client in clients:
            async for key in client.scan_iter(match=f"{prefix}*"):
                await client.delete(key)
            await client.aclose()
        await receiver.stop()
    assert len(receiver.deliveries) == 3
    bodies = [json.loads(d.body)["data"] for d in deliveries]
    assert sorted(b["threshold"] for b in bodies) == [0.5, 0.8, 1.0]
    assert {b["tenant_id"] for b in bodies} == {tenant.tenant_id}
    assert len({d.headers["webhook-id"] for d in deliveries}) == 3
    for d in deliveries:
        assert verify(
            secret, d.headers["webhook-id"], int(d.headers["webhook-timestamp"]), d.body, d.headers["webhook-signature"]
        )
    assert await alert_counts(pool, tenant.tenant_id) == (3, 3)
    assert await ledger_spend_today(pool, tenant.tenant_id) == 120 * (DAILY_MICRO_USD // 100)


async def test_time_billed_spend_counts_as_the_budget_counters_count_it(pool: asyncpg.Pool) -> None:
    """Duration rows (GPT-Live voice time, translation audio) are spend too, as the budget rebuild reads it."""
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep-duration")
    await store.set(tenant.tenant_id, {"budget": {"monthly_usd": "2", "alert_at": [0.5]}}, actor="test")
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
    writer.start()
    session_id = f"vgs_{secrets.token_hex(8)}"
    now = time.time()
    writer.submit(SessionStarted(session_id, tenant.tenant_id, None, "websocket", "translation", None, None, "t", now))
    writer.submit(
        DurationRecord(
            session_id,
            "translation",
            "u1",
            tenant.tenant_id,
            "gpt-realtime-translate",
            now,
            600_000,
            0,
            False,
            1_000_000,
            "v",
        )
    )
    assert await writer.drain(10)
    await writer.stop(timeout=5)
    (found,) = await AlertSweep(pool, store).run()
    assert (found.period, found.threshold, found.budget_micro_usd, found.spent_micro_usd) == (
        "month",
        0.5,
        2_000_000,
        1_000_000,
    )


async def test_every_billed_table_counts_toward_the_swept_spend(pool: asyncpg.Pool) -> None:
    """The sweep reads the daily cost rollup: one row in each of COST_TABLES, a quarter of the budget
    each, crosses 100 % only if every table reaches it, and the spend it reports is the raw tables' sum."""
    store = PolicyStore(pool, {}, None)
    tenant = await make_tenant(pool, "sweep-tables")
    await store.set(tenant.tenant_id, {"budget": {"monthly_usd": "1", "alert_at": [1.0]}}, actor="test")
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
    writer.start()
    session_id = f"vgs_{secrets.token_hex(8)}"
    now, tid = time.time(), tenant.tenant_id
    writer.submit(SessionStarted(session_id, tid, None, "websocket", "realtime", "gpt-realtime", None, "t", now))
    records = [
        usage_record(session_id, tid, f"resp_{secrets.token_hex(8)}", now, 250_000),
        TranscriptionRecord(
            session_id, tid, "item_1", 0, "gpt-4o-transcribe", now, "tokens", 0, 90, 10, 0, 250_000, "v"
        ),
        DurationRecord(
            session_id, "translation", "u1", tid, "gpt-realtime-translate", now, 60_000, 0, False, 250_000, "v"
        ),
        LiveTokenRecord(session_id, "response", "r1", tid, "gpt-5", None, "completed", now, 100, 0, 50, 250_000, "v"),
    ]
    assert len(records) == len(COST_TABLES)  # a new billed table needs a record here (and a rollup trigger)
    for record in records[:-1]:
        writer.submit(record)
    assert await writer.drain(10)
    # Three quarters: below the mark.
    assert await AlertSweep(pool, store).run() == []
    writer.submit(records[-1])
    assert await writer.drain(10)
    await writer.stop(timeout=5)
    raw = " UNION ALL ".join(f"SELECT cost_micro_usd FROM {t} WHERE tenant_id = $1" for t in COST_TABLES)
    per_table = await pool.fetchval(f"SELECT array_agg(cost_micro_usd) FROM ({raw}) AS spend", tid)
    assert sorted(per_table) == [250_000] * len(records)  # a row in every billed table
    (found,) = await AlertSweep(pool, store).run()
    assert (found.period, found.threshold, found.spent_micro_usd) == ("month", 1.0, sum(per_table))


def test_the_sweep_interval_is_a_setting() -> None:
    assert Settings.from_env({}).alerts.sweep_seconds == 60.0
    assert Settings.from_env({"VOXGATE_ALERT_SWEEP_SECONDS": "15"}).alerts.sweep_seconds == 15.0
    assert Settings.from_env({"VOXGATE_ALERT_SWEEP_SECONDS": "0"}).alerts.sweep_seconds == 0.0


async def outbox_rows(pool: asyncpg.Pool, tenant_id: str, seconds: float) -> int:
    """The tenant's outbox rows once `seconds` have passed (or as soon as one appears)."""
    deadline = time.monotonic() + seconds
    while True:
        count: int = await pool.fetchval("SELECT count(*) FROM budget_alerts WHERE tenant_id = $1", tenant_id)
        if count or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.05)


async def test_the_sender_sweeps_at_its_interval_and_never_at_zero(pool: asyncpg.Pool) -> None:
    store = PolicyStore(pool, {}, None)
    off, on = await make_tenant(pool, "sweep-off"), await make_tenant(pool, "sweep-on")
    for tenant in (off, on):
        await store.set(tenant.tenant_id, {"budget": {"daily_usd": "1", "alert_at": [0.5]}}, actor="test")
    await commit_responses(pool, off.tenant_id, [600_000])
    # VOXGATE_ALERT_SWEEP_SECONDS=0: the sender delivers, and never sweeps.
    sender = AlertSender(
        AlertOutbox(pool), AlertSettings(poll_seconds=0.05, sweep_seconds=0), sweep=AlertSweep(pool, store)
    )
    sender.start()
    try:
        assert await outbox_rows(pool, off.tenant_id, 1.5) == 0
    finally:
        await sender.stop()
    # Every 0.5 s: the first pass sweeps at start; a crossing committed after it is found by a later one.
    sender = AlertSender(
        AlertOutbox(pool), AlertSettings(poll_seconds=0.05, sweep_seconds=0.5), sweep=AlertSweep(pool, store)
    )
    sender.start()
    try:
        assert await outbox_rows(pool, off.tenant_id, 5) == 1
        await commit_responses(pool, on.tenant_id, [600_000])
        assert await outbox_rows(pool, on.tenant_id, 5) == 1
    finally:
        await sender.stop()
