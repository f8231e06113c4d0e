"""Budget alerts reach a real HTTP receiver: signed per Standard Webhooks, retried with the same
webhook-id, routed to a tenant's own webhook, and listed in the delivery log (docs/finance.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.alerts.outbox import AlertOutbox
from gateway.alerts.sender import AlertSender
from gateway.alerts.signing import new_secret, verify
from gateway.settings import AdminSettings, AlertSettings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token, claims, hs256
from tests.support.budget_crossing import DAILY_MICRO_USD, Replica, daily_policy, own_database, settle_at_once
from tests.support.clock import FakeClock
from tests.support.gateway_process import VOXGATE
from tests.support.harness import gateway_settings, make_tenant, start_gateway
from tests.support.webhook_receiver import Delivery, WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with own_database() as dsn:
        yield dsn


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = await WebhookReceiver().start()
    yield receiver
    await receiver.stop()


def assert_signed(delivery: Delivery, secret: str) -> None:
    headers = delivery.headers
    assert headers["content-type"] == "application/json"
    assert verify(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), delivery.body, headers["webhook-signature"]
    )
    assert not verify(
        new_secret(),
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        delivery.body,
        headers["webhook-signature"],
    )


async def test_a_failed_delivery_is_retried_within_10_s_with_the_same_webhook_id(
    pool: asyncpg.Pool, receiver: WebhookReceiver
) -> None:
    clock = FakeClock()
    secret = new_secret()
    tenant = await make_tenant(pool, "alerts-retry")
    replica = Replica(pool, clock=clock)
    await settle_at_once([replica], tenant.tenant_id, daily_policy(0.5), 1, DAILY_MICRO_USD * 6 // 10)
    await replica.close()
    sender = AlertSender(AlertOutbox(pool), AlertSettings(receiver.url, secret), clock)
    receiver.statuses.append(500)
    try:
        assert await sender.deliver_due() == 1
        assert await sender.deliver_due() == 0  # not due again yet
        await clock.advance(9.9)
        assert await sender.deliver_due() == 1  # the first retry comes within 10 s
        await clock.advance(3600)
        assert await sender.deliver_due() == 0  # delivered: never sent again
    finally:
        await sender.stop()
    first, second = receiver.deliveries
    assert (first.status, second.status) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    for delivery in (first, second):
        assert_signed(delivery, secret)
    assert json.loads(second.body) == {
        "type": "budget.threshold_crossed",
        "data": {
            "tenant_id": tenant.tenant_id,
            "period": "day",
            "period_start": "2026-01-01",  # the fake clock's day
            "threshold": 0.5,
            "budget_micro_usd": DAILY_MICRO_USD,
            "spent_micro_usd": DAILY_MICRO_USD * 6 // 10,
        },
    }
    row = await pool.fetchrow("SELECT attempts, last_status, delivered_at FROM budget_alerts")
    assert (row["attempts"], row["last_status"]) == (2, "200")
    assert row["delivered_at"] is not None


async def test_two_senders_on_one_outbox_deliver_each_alert_once(pool: asyncpg.Pool, receiver: WebhookReceiver) -> None:
    secret = new_secret()
    tenants = [await make_tenant(pool, "alerts-pair") for _ in range(6)]
    replica = Replica(pool)
    for tenant in tenants:
        await settle_at_once([replica], tenant.tenant_id, daily_policy(0.1, 0.2), 1, DAILY_MICRO_USD // 2)
    await replica.close()
    senders = [AlertSender(AlertOutbox(pool), AlertSettings(receiver.url, secret)) for _ in range(2)]
    try:
        await asyncio.gather(*(sender.deliver_due() for sender in senders * 3))
    finally:
        for sender in senders:
            await sender.stop()
    ids = [d.headers["webhook-id"] for d in receiver.deliveries]
    assert len(ids) == len(set(ids)) == 12


async def test_a_tenants_own_webhook_and_the_delivery_log(dsn: str, pool: asyncpg.Pool, emulator: Any) -> None:
    globally, own = await WebhookReceiver().start(), await WebhookReceiver().start()
    global_secret, own_secret = new_secret(), new_secret()
    settings = gateway_settings(dsn, REDIS_URL, emulator.base_url)
    settings = replace(
        settings,
        admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None),
        alerts=AlertSettings(globally.url, global_secret, poll_seconds=0.05),
    )
    gateway = await start_gateway(settings)
    routed, other = await make_tenant(pool, "alerts-own"), await make_tenant(pool, "alerts-global")
    base = gateway.server.http_url
    try:
        async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {admin_token()}"}) as http:
            bad = await http.put(
                f"/admin/v1/tenants/{routed.tenant_id}/alert-webhook", json={"url": own.url, "secret": "hunter2"}
            )
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "secret"
            put = await http.put(
                f"/admin/v1/tenants/{routed.tenant_id}/alert-webhook", json={"url": own.url, "secret": own_secret}
            )
            assert put.status_code == 200, put.text
            assert put.json() == {"tenant_id": routed.tenant_id, "url": own.url, "secret_set": True}
            assert own_secret not in (await http.get(f"/admin/v1/tenants/{routed.tenant_id}/alert-webhook")).text
            replica = Replica(pool)
            for tenant in (routed, other):
                await settle_at_once([replica], tenant.tenant_id, daily_policy(0.5), 1, DAILY_MICRO_USD)
            await replica.close()
            (to_own,) = await own.wait_for(1)
            (to_global,) = await globally.wait_for(1)
            assert json.loads(to_own.body)["data"]["tenant_id"] == routed.tenant_id
            assert json.loads(to_global.body)["data"]["tenant_id"] == other.tenant_id
            assert_signed(to_own, own_secret)
            assert_signed(to_global, global_secret)

            # The receiver has the POST before the sender records its answer: wait for the log to say so.
            for _ in range(100):
                log = await http.get("/v1/organization/alerts")
                assert log.status_code == 200, log.text
                rows = {row["tenant_id"]: row for row in log.json()["data"]}
                if all(r["status"] != "pending" for r in rows.values()) and len(rows) == 2:
                    break
                await asyncio.sleep(0.05)
            assert set(rows) == {routed.tenant_id, other.tenant_id}
            row = rows[routed.tenant_id]
            assert (row["threshold"], row["period"], row["attempts"], row["last_status"], row["status"]) == (
                0.5,
                "day",
                1,
                "200",
                "delivered",
            )
            assert row["id"] == to_own.headers["webhook-id"] and row["delivered_at"]

            def finance(tenant_id: str | None = None) -> dict[str, str]:
                extra = {} if tenant_id is None else {"tenant_id": tenant_id}
                return {"authorization": f"Bearer {hs256(claims(roles=['finance'], **extra))}"}

            scoped = await http.get("/v1/organization/alerts", headers=finance(other.tenant_id))
            assert [r["tenant_id"] for r in scoped.json()["data"]] == [other.tenant_id]
            hidden = await http.get(
                "/v1/organization/alerts", params={"project_id": routed.tenant_id}, headers=finance(other.tenant_id)
            )
            assert hidden.status_code == 404
            assert (await http.get("/v1/organization/alerts", headers={"authorization": ""})).status_code == 401
            tenant_admin = hs256(claims(roles=["tenant_admin"], tenant_id=other.tenant_id))
            denied = await http.get("/v1/organization/alerts", headers={"authorization": f"Bearer {tenant_admin}"})
            assert denied.status_code == 403
            tenant_key = await http.get("/v1/organization/alerts", headers={"authorization": f"Bearer {other.secret}"})
            assert (tenant_key.status_code, tenant_key.json()["error"]["code"]) == (403, "insufficient_role")

        cli = subprocess.run(
            [str(VOXGATE), "alerts", "list", "--json", "--tenant", routed.tenant_id],
            env={**os.environ, "VOXGATE_DATABASE_URL": dsn},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["data"] == [rows[routed.tenant_id]]
    finally:
        await gateway.stop()
        await globally.stop()
        await own.stop()
