"""A budget alert crossed by a real response is delivered exactly once, even when the gateway is
killed between the crossing and the delivery (the outbox; docs/finance.md, "Budget alerts")."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import websockets

from gateway.alerts.signing import new_secret, verify
from gateway.livestate import LiveState
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.budget_crossing import own_database
from tests.support.gateway_process import delete_keys, free_port, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, TenantKey, make_tenant
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e


async def one_response(ws_url: str, key: str) -> None:
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(15):
            while json.loads(await ws.recv())["type"] != "response.done":
                pass


async def first_attempt(pool: asyncpg.Pool, tenant_id: str) -> asyncpg.Record:
    async with asyncio.timeout(20):
        while True:
            row = await pool.fetchrow("SELECT * FROM budget_alerts WHERE tenant_id = $1", tenant_id)
            if row is not None and row["last_status"] is not None:
                return row
            await asyncio.sleep(0.05)


async def test_an_alert_is_delivered_once_across_a_sigkill_between_crossing_and_delivery(
    emulator: Any, tmp_path: Path
) -> None:
    secret = new_secret()
    port = free_port()  # the receiver's, not listening yet: the first attempt cannot connect
    url = f"http://127.0.0.1:{port}/hooks/budget"
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    async with own_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        tenant = await make_tenant(pool, "alerts-kill")
        # A threshold any response crosses: 0.1 % of $1 a day.
        budget = {"daily_usd": "1", "alert_at": [0.001]}
        await PolicyStore(pool, {}, None).set(tenant.tenant_id, {"budget": budget}, actor="test")
        env = gateway_env(
            dsn,
            REDIS_URL,
            emulator.base_url,
            prefix,
            UPSTREAM_KEY,
            VOXGATE_ALERT_WEBHOOK_URL=url,
            VOXGATE_ALERT_WEBHOOK_SECRET=secret,
            VOXGATE_ALERT_POLL_SECONDS="0.1",
        )
        receiver = WebhookReceiver(port=port)
        try:
            async with gateway_process(env, tmp_path, "alerts-a") as first:
                await one_response(first.ws_url, tenant.secret)
                attempted = await first_attempt(pool, tenant.tenant_id)
                assert attempted["attempts"] == 1 and attempted["delivered_at"] is None
                assert await first.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
            await receiver.start()
            async with gateway_process(env, tmp_path, "alerts-b"):
                (delivery,) = await receiver.wait_for(1)
                await asyncio.sleep(1.0)  # several more polls: nothing else arrives
                assert len(receiver.deliveries) == 1
            row = await pool.fetchrow("SELECT * FROM budget_alerts WHERE tenant_id = $1", tenant.tenant_id)
        finally:
            await receiver.stop()
            await pool.close()
            await delete_keys(REDIS_URL, prefix)
    assert delivery.headers["webhook-id"] == row["id"] == attempted["id"]
    assert verify(
        secret,
        delivery.headers["webhook-id"],
        int(delivery.headers["webhook-timestamp"]),
        delivery.body,
        delivery.headers["webhook-signature"],
    )
    body = json.loads(delivery.body)
    assert body["type"] == "budget.threshold_crossed"
    assert body["data"]["tenant_id"] == tenant.tenant_id
    assert (body["data"]["period"], body["data"]["threshold"], body["data"]["budget_micro_usd"]) == (
        "day",
        0.001,
        1_000_000,
    )
    assert body["data"]["spent_micro_usd"] >= 1_000
    assert (row["attempts"], row["last_status"]) == (2, "200")
    assert row["delivered_at"] is not None


async def settled(live: LiveState, tenant_id: str) -> None:
    """Until the gateway's Redis settle has counted the tenant's spend."""
    async with asyncio.timeout(15):
        while (await live.spend(tenant_id, time.time())).spent_day <= 0:
            await asyncio.sleep(0.02)


async def gateway_quiet(pool: asyncpg.Pool) -> None:
    """Until no other backend of the test's own database runs a statement, seen three times in a row:
    with the gateway stopped (SIGSTOP), what it sent before has then been executed, and nothing it
    left open can commit any more (its SIGKILL rolls an open transaction back)."""
    quiet = 0
    async with asyncio.timeout(15):
        while quiet < 3:
            active = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state = 'active'"
            )
            quiet = quiet + 1 if active == 0 else 0
            await asyncio.sleep(0.1)


async def test_an_alert_lost_with_a_process_killed_after_the_settle_is_recovered_from_the_ledger_once(
    emulator: Any, tmp_path: Path
) -> None:
    """The gap the outbox alone leaves: SIGKILL after the response's ledger commit and its Redis settle,
    before the ledger writer commits the `budget.alert` row (held back here by a 30 s batching pause).
    Redis already counts the spend, so no later settle crosses the threshold again; the next start's
    ledger sweep records the crossing and delivers it, once, and later starts do not repeat it."""
    secret = new_secret()
    receiver = WebhookReceiver(port=free_port())  # not listening while the first gateway runs
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    redis_client = aioredis.from_url(REDIS_URL)
    live = LiveState(redis_client, prefix, "probe")
    async with own_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        store = PolicyStore(pool, {}, None)
        env = gateway_env(
            dsn,
            REDIS_URL,
            emulator.base_url,
            prefix,
            UPSTREAM_KEY,
            VOXGATE_ALERT_WEBHOOK_URL=receiver.url,
            VOXGATE_ALERT_WEBHOOK_SECRET=secret,
            VOXGATE_ALERT_POLL_SECONDS="0.1",
            VOXGATE_LEDGER_FLUSH_INTERVAL="30",
        )
        lost: TenantKey | None = None
        try:
            async with gateway_process(env, tmp_path, "alerts-a") as first:
                for attempt in range(3):  # the audit row can ride in the response's own batch: then try again
                    tenant = await make_tenant(pool, f"alerts-lost-{attempt}")
                    await store.set(tenant.tenant_id, {"budget": {"daily_usd": "1", "alert_at": [0.001]}}, "test")
                    await one_response(first.ws_url, tenant.secret)
                    await settled(live, tenant.tenant_id)
                    # Frozen first, so what is checked below is what the SIGKILL finds: the audit row may be
                    # in a batch being written (committed just after its response's usage row) rather than
                    # held by the pause, so the check waits for Postgres to finish what was sent before.
                    first.proc.send_signal(signal.SIGSTOP)
                    await gateway_quiet(pool)
                    committed = await pool.fetchval(
                        "SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
                    )
                    claimed = await pool.fetchval(
                        "SELECT count(*) FROM budget_alerts WHERE tenant_id = $1", tenant.tenant_id
                    )
                    if committed == 1 and claimed == 0:
                        lost = tenant
                        break
                    first.proc.send_signal(signal.SIGCONT)
                assert lost is not None, "the budget.alert row was committed with its response every time"
                assert await first.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
            assert await pool.fetchval("SELECT count(*) FROM budget_alerts WHERE tenant_id = $1", lost.tenant_id) == 0
            spent = await pool.fetchval(
                "SELECT sum(cost_micro_usd)::bigint FROM usage_ledger WHERE tenant_id = $1", lost.tenant_id
            )
            await receiver.start()
            async with gateway_process(env, tmp_path, "alerts-b"):
                async with asyncio.timeout(20):
                    while not [
                        d for d in receiver.deliveries if json.loads(d.body)["data"]["tenant_id"] == lost.tenant_id
                    ]:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # several more polls: nothing else arrives
            async with gateway_process(env, tmp_path, "alerts-c") as third:
                # Its start sweeps the ledger again, and one more response settles past the mark.
                await one_response(third.ws_url, lost.secret)
                await asyncio.sleep(1.5)
            counts = await pool.fetchrow(
                "SELECT (SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'budget.alert') AS audit,"
                " (SELECT count(*) FROM budget_alerts WHERE tenant_id = $1) AS outbox",
                lost.tenant_id,
            )
            row = await pool.fetchrow("SELECT * FROM budget_alerts WHERE tenant_id = $1", lost.tenant_id)
        finally:
            await receiver.stop()
            await pool.close()
            await delete_keys(REDIS_URL, prefix)
            await redis_client.aclose()
    mine = [d for d in receiver.deliveries if json.loads(d.body)["data"]["tenant_id"] == lost.tenant_id]
    assert len(mine) == 1
    (delivery,) = mine
    assert (counts["audit"], counts["outbox"]) == (1, 1)
    assert delivery.headers["webhook-id"] == row["id"]
    assert verify(
        secret,
        delivery.headers["webhook-id"],
        int(delivery.headers["webhook-timestamp"]),
        delivery.body,
        delivery.headers["webhook-signature"],
    )
    data = json.loads(delivery.body)["data"]
    assert (data["period"], data["threshold"], data["budget_micro_usd"]) == ("day", 0.001, 1_000_000)
    assert data["spent_micro_usd"] == spent >= 1_000  # the ledger's spend: the response's row
    assert (row["attempts"], row["last_status"]) == (1, "200") and row["delivered_at"] is not None
