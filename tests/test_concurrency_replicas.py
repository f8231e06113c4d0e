"""A tenant's concurrency cap holds across two gateway processes and recovers when one dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.storage.policy_store import PolicyStore
from tests.conftest import REDIS_URL
from tests.support.harness import UPSTREAM_KEY, TenantKey
from tests.test_demo import free_port

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def gateway_process(
    pg_dsn: str, upstream_url: str, prefix: str, name: str, scan: str = "0"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")},
        "VOXGATE_DATABASE_URL": pg_dsn, "VOXGATE_REDIS_URL": REDIS_URL, "VOXGATE_REDIS_PREFIX": prefix,
        "VOXGATE_UPSTREAM_URL": upstream_url, "VOXGATE_OPENAI_API_KEY": UPSTREAM_KEY,
        "VOXGATE_PORT": str(port), "VOXGATE_INSTANCE_ID": name, "VOXGATE_LEASE_TTL_SECONDS": "1.5",
        "VOXGATE_REAP_INTERVAL_SECONDS": "0.3", "VOXGATE_SHUTDOWN_GRACE_SECONDS": "0", "VOXGATE_LOG_LEVEL": "WARNING",
        "VOXGATE_DEFAULT_TIER": "", "VOXGATE_CALLS_SCAN_SECONDS": scan,
    }  # fmt: skip
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
        await proc_a.wait()
        del on_a
        # pod-b reaps pod-a's lease within ttl + reap interval, and the tenant can start again.
        async with asyncio.timeout(20):
            while True:
                try:
                    again = await open_session(url_b, tenant)
                    break
                except InvalidStatus:
                    await asyncio.sleep(0.2)
        await again.close()
        await on_b.close()
        # pod-b also ends pod-a's orphaned session row; its ledger writes it within moments.
        async with asyncio.timeout(20):
            while True:
                rows = await pg_pool.fetch(
                    "SELECT gateway_instance, end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id
                )
                if ("pod-a", "replica_lost") in {(r["gateway_instance"], r["end_reason"]) for r in rows}:
                    break
                await asyncio.sleep(0.1)
