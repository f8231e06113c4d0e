"""A budget alert crossed by a real response is delivered exactly once, even when the gateway is
killed between the crossing and the delivery (the outbox; docs/finance.md, "Budget alerts")."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from gateway.alerts.signing import new_secret, verify
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.budget_crossing import own_database
from tests.support.gateway_process import delete_keys, free_port, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, make_tenant
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
