"""Replicas: the concurrency cap holds across two gateways and recovers when one dies; broadcasts
reach live sessions on every replica within a second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.livestate import LiveState
from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.harness import UPSTREAM_KEY, Gateway, TenantKey, gateway_settings, start_gateway
from tests.test_demo import free_port
from tests.test_enforcement_e2e import next_of, speak, until_closed

pytestmark = pytest.mark.e2e

# The replicas' lease settings (docs/live-state.md, "Leases and reaping"): bounds are asserted from these.
LEASE_TTL_S = 1.5
REAP_INTERVAL_S = 0.3
LEDGER_FLUSH_S = 0.05  # VOXGATE_LEDGER_FLUSH_INTERVAL
POLL_S = 0.05
# README.md: a policy change reaches live sessions on every replica within a second; a budget
# exhausted on one replica closes the tenant's sessions on every replica (same broadcast path).
BROADCAST_S = 1.0
# Scheduling slack on top of a documented bound: the poll period, plus one WebSocket handshake or
# Postgres query and the event-loop delay of a 2-core machine running other test suites at once.
SLACK_S = 0.4


@asynccontextmanager
async def gateway_process(
    pg_dsn: str, upstream_url: str, prefix: str, name: str, scan: str = "0"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")},
        "VOXGATE_DATABASE_URL": pg_dsn,
        "VOXGATE_REDIS_URL": REDIS_URL,
        "VOXGATE_REDIS_PREFIX": prefix,
        "VOXGATE_UPSTREAM_URL": upstream_url,
        "VOXGATE_OPENAI_API_KEY": UPSTREAM_KEY,
        "VOXGATE_PORT": str(port),
        "VOXGATE_INSTANCE_ID": name,
        "VOXGATE_LEASE_TTL_SECONDS": str(LEASE_TTL_S),
        "VOXGATE_REAP_INTERVAL_SECONDS": str(REAP_INTERVAL_S),
        "VOXGATE_SHUTDOWN_GRACE_SECONDS": "0",
        "VOXGATE_LOG_LEVEL": "WARNING",
        "VOXGATE_LEDGER_FLUSH_INTERVAL": str(LEDGER_FLUSH_S),
        "VOXGATE_DEFAULT_TIER": "",
        "VOXGATE_CALLS_SCAN_SECONDS": scan,
    }
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).with_name("voxgate")), "serve", env=env)
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
    try:
        async with asyncio.timeout(20), httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()


async def open_session(url: str, tenant: TenantKey) -> websockets.ClientConnection:
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {tenant.secret}"})
    assert json.loads(await ws.recv())["type"] == "session.created"
    return ws


async def refused(url: str, tenant: TenantKey) -> int:
    with pytest.raises(InvalidStatus) as info:
        await open_session(url, tenant)
    assert json.loads(info.value.response.body)["error"]["code"] == "concurrency_limit_exceeded"
    return info.value.response.status_code


async def test_cap_holds_across_two_processes_and_recovers_after_a_kill(
    pg_dsn, emulator, tenant, pg_pool, redis_prefix
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_concurrent_sessions": 2}, actor="test")
    prefix = f"{redis_prefix}replicas:"
    async with (
        gateway_process(pg_dsn, emulator.base_url, prefix, "pod-a") as (proc_a, url_a),
        gateway_process(pg_dsn, emulator.base_url, prefix, "pod-b") as (_, url_b),
    ):
        on_a = await open_session(url_a, tenant)
        on_b = await open_session(url_b, tenant)
        assert await refused(url_a, tenant) == 429
        assert await refused(url_b, tenant) == 429

        proc_a.kill()  # SIGKILL: no drain, no lease release
        killed = time.monotonic()  # pod-a's last heartbeat was at or before this moment
        await proc_a.wait()
        del on_a
        # docs/live-state.md: the tenant's capacity comes back within ttl_s of the dead replica's last
        # renewal (the next acquire reaps an expired lease at once).
        async with asyncio.timeout(LEASE_TTL_S + SLACK_S):
            while True:
                try:
                    again = await open_session(url_b, tenant)
                    break
                except InvalidStatus:
                    await asyncio.sleep(POLL_S)
        assert time.monotonic() - killed <= LEASE_TTL_S + SLACK_S
        await again.close()
        await on_b.close()
        # ... and the reaper ends pod-a's orphaned session row within ttl_s + the reap interval,
        # plus one ledger flush to land it in Postgres.
        async with asyncio.timeout(LEASE_TTL_S + REAP_INTERVAL_S + LEDGER_FLUSH_S + SLACK_S):
            while True:
                rows = await pg_pool.fetch(
                    "SELECT gateway_instance, end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id
                )
                if ("pod-a", "replica_lost") in {(r["gateway_instance"], r["end_reason"]) for r in rows}:
                    break
                await asyncio.sleep(POLL_S)


@asynccontextmanager
async def two_gateways(pg_dsn: str, upstream_url: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two in-process replicas sharing Postgres and one Redis prefix (so they hear each other)."""
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    started: list[Gateway] = []
    try:
        for name in ("pod-a", "pod-b"):
            settings = gateway_settings(pg_dsn, REDIS_URL, upstream_url)
            settings = replace(
                settings,
                redis=replace(settings.redis, key_prefix=prefix),
                server=replace(settings.server, instance_id=name),
            )
            started.append(await start_gateway(settings))
        yield started[0], started[1]
    finally:
        for gateway in started:
            await gateway.stop()


def realtime_url(gateway: Gateway) -> str:
    return f"{gateway.ws_url}?model=gpt-realtime"


async def test_a_policy_change_reaches_live_sessions_on_both_replicas_within_a_second(
    pg_dsn, emulator, tenant, pg_pool, redis_client
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_output_tokens": 500}, actor="test")
    async with two_gateways(pg_dsn, emulator.base_url) as (a, b):
        before = len(emulator.sessions)
        sessions = [await open_session(realtime_url(a), tenant), await open_session(realtime_url(b), tenant)]
        upstreams = emulator.sessions[before:]
        assert len(upstreams) == 2

        def clamped_to(tokens: int) -> list[bool]:
            return [
                any(
                    e["type"] == "session.update" and e["session"].get("max_output_tokens") == tokens
                    for e in upstream.client_events
                )
                for upstream in upstreams
            ]

        async with asyncio.timeout(5):  # both sessions carry the first ceiling before the change
            while not all(clamped_to(500)):
                await asyncio.sleep(POLL_S)
        # The admin API's and the CLI's path: store a new version, announce it on the shared prefix.
        store = PolicyStore(pg_pool, {}, None, LiveState(redis_client, a.settings.redis.key_prefix))
        changed = time.monotonic()
        await store.set(tenant.tenant_id, {"max_output_tokens": 50}, actor="test")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BROADCAST_S + SLACK_S):
                while not all(clamped_to(50)):
                    await asyncio.sleep(POLL_S / 5)
        took = time.monotonic() - changed
        assert clamped_to(50) == [True, True]
        assert took <= BROADCAST_S, f"re-clamped on both replicas after {took:.3f} s"
        for ws in sessions:
            await ws.close()


async def test_a_budget_exhausted_on_one_replica_closes_the_tenants_sessions_on_the_other(
    pg_dsn, emulator, tenant, pg_pool
) -> None:
    # The budget covers one response with no input (1 output token x 64 micro-USD, by hand), so the
    # response server VAD starts after speech (its input is that audio) cannot fit: it is reserved
    # after the fact, finishes (finish_response), and its settle crosses the limit.
    await PolicyStore(pg_pool, {}, None).set(
        tenant.tenant_id,
        {"max_output_tokens": 1, "budget": {"daily_usd": "0.000064", "at_limit": "finish_response"}},
        actor="test",
    )
    async with two_gateways(pg_dsn, emulator.base_url) as (a, b):
        speaker = await open_session(realtime_url(a), tenant)
        bystander = await open_session(realtime_url(b), tenant)

        async def watch_bystander() -> tuple[list[dict[str, object]], float]:
            events = await until_closed(bystander, 20)
            return events, time.monotonic()

        watcher = asyncio.create_task(watch_bystander())
        await speak(speaker, 600)
        done = await next_of(speaker, "response.done", 15)
        done_at = time.monotonic()
        events, closed_at = await watcher
        await until_closed(speaker, 5)
    assert bystander.close_code == 4003 and speaker.close_code == 4003
    assert [e["error"]["code"] for e in events if e["type"] == "error"] == ["budget_exhausted"]  # type: ignore[index]
    assert closed_at - done_at <= BROADCAST_S, f"closed on the other replica {closed_at - done_at:.3f} s later"
    spent = await pg_pool.fetchval(
        "SELECT sum(cost_micro_usd) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id
    )
    assert spent == doc_prices.doc_cost(done["response"]["usage"]) > 64
