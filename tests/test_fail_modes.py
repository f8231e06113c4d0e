"""Redis unreachable at admission: each tenant's `redis_unavailable` decides, through a real gateway.

Redis is cut with a loopback TCP proxy (a real outage: connections reset, new ones refused),
never with a mock. README.md, "When Redis is unreachable": `fail_closed` (the default) refuses new
sessions with 503 `live_state_unavailable` and `retry-after`; `fail_open` admits them without
shared checks; live sessions keep being metered into the Postgres ledger either way, their budget
reservations granted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.harness import Gateway, TenantKey, gateway_settings, make_tenant, start_gateway
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e

BUDGET = {"daily_usd": "100"}  # reservations are taken (and must be granted) during the outage


@pytest.fixture
async def redis_link() -> AsyncIterator[TcpProxy]:
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def cut_gateway(pg_dsn: str, emulator, redis_link: TcpProxy) -> AsyncIterator[Gateway]:
    """A gateway whose only way to Redis is `redis_link`."""
    gateway = await start_gateway(gateway_settings(pg_dsn, f"redis://127.0.0.1:{redis_link.port}", emulator.base_url))
    yield gateway
    redis_link.restore()
    await gateway.stop()


async def tenant_with(pool: asyncpg.Pool, name: str, **policy: Any) -> TenantKey:
    tenant = await make_tenant(pool, name)
    await PolicyStore(pool, {}, None).set(
        tenant.tenant_id, {"max_concurrent_sessions": 10, "budget": BUDGET, **policy}, actor="test"
    )
    return tenant


async def open_session(gateway: Gateway, tenant: TenantKey) -> websockets.ClientConnection:
    ws = await websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    )
    assert json.loads(await ws.recv())["type"] == "session.created"
    return ws


async def text_turn(ws: websockets.ClientConnection) -> dict[str, Any]:
    """One text response; returns its `response.done`."""
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            }
        )
    )
    await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())
            assert event["type"] != "error", event
            if event["type"] == "response.done":
                return event["response"]  # type: ignore[no-any-return]


async def ledger_cost(pool: asyncpg.Pool, response_id: str) -> int | None:
    cost: int | None = await pool.fetchval(
        "SELECT cost_micro_usd FROM usage_ledger WHERE response_id = $1", response_id
    )
    return cost


async def test_redis_cut_refuses_fail_closed_tenants_admits_fail_open_ones_and_meters_both(
    cut_gateway: Gateway, redis_link: TcpProxy, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await tenant_with(pg_pool, "closed")  # no `redis_unavailable`: the default must be fail_closed
    opened = await tenant_with(pg_pool, "open", redis_unavailable="fail_open")
    live = await open_session(cut_gateway, closed)  # admitted while Redis answers

    caplog.set_level(logging.WARNING, logger="voxgate")
    redis_link.cut()
    with pytest.raises(InvalidStatus) as info:
        await open_session(cut_gateway, closed)
    refused = info.value.response
    assert refused.status_code == 503
    error = json.loads(refused.body)["error"]
    assert sorted(error) == ["code", "message", "param", "type"]  # OpenAI's error shape
    assert (error["code"], error["type"]) == ("live_state_unavailable", "server_error")
    assert int(refused.headers["retry-after"]) >= 1

    # fail_open: admitted without shared checks, and its reservation is granted, so it runs and is metered.
    admitted = await open_session(cut_gateway, opened)
    done_open = await text_turn(admitted)
    # The session admitted before the cut keeps running and is metered too.
    done_live = await text_turn(live)
    await admitted.close()
    await live.close()
    await cut_gateway.settle()
    for done in (done_open, done_live):
        assert await ledger_cost(pg_pool, done["id"]) == doc_prices.doc_cost(done["usage"]) > 0
    # ... and the degraded mode is not silent: a warning is logged.
    assert any(r.levelno == logging.WARNING and r.name.startswith("voxgate") for r in caplog.records)

    # Redis back: the fail_closed tenant is admitted again once the advertised retry-after has passed.
    redis_link.restore()
    await asyncio.sleep(int(refused.headers["retry-after"]))
    again = await open_session(cut_gateway, closed)
    await again.close()
