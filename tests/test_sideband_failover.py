"""Killing the replica that monitors a WebRTC call hands the call to another; metering goes on, once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.webrtc_client import ClientPeer
from tests.test_concurrency_replicas import LEASE_TTL_S, POLL_S, SLACK_S, gateway_process

pytestmark = pytest.mark.e2e


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


SCAN_S = 0.2  # VOXGATE_CALLS_SCAN_SECONDS of both replicas (`serve` wants < LEASE_TTL_S/6)


async def test_a_killed_monitor_is_replaced_and_metering_continues_once(
    pg_dsn, emulator, tenant, pg_pool, redis_prefix, redis_client, peer
) -> None:
    prefix = f"{redis_prefix}failover:"  # both replicas share it, as a deployment's replicas do
    async with (
        gateway_process(pg_dsn, emulator.base_url, prefix, "pod-a", scan=str(SCAN_S)) as (proc_a, url_a),
        gateway_process(pg_dsn, emulator.base_url, prefix, "pod-b", scan=str(SCAN_S)),
    ):
        base_a = url_a.replace("ws://", "http://").split("/v1/")[0] + "/v1"
        files = {
            "sdp": (None, await peer.offer(), "application/sdp"),
            "session": (None, json.dumps({"type": "realtime", "model": "gpt-realtime"}), "application/json"),
        }
        async with httpx.AsyncClient() as http:
            brokered = await http.post(
                f"{base_a}/realtime/calls", files=files, headers={"Authorization": f"Bearer {tenant.secret}"}
            )
        assert brokered.status_code == 201, brokered.text
        call_id = brokered.headers["location"].rsplit("/", 1)[1]
        await peer.accept(brokered.text)
        await peer.wait_for("session.created")
        session_id = await pg_pool.fetchval("SELECT session_id FROM realtime_calls WHERE call_id = $1", call_id)

        async def metered(n: int) -> list[str]:
            async with asyncio.timeout(15):
                while True:
                    rows = await pg_pool.fetch("SELECT response_id FROM usage_ledger WHERE session_id = $1", session_id)
                    if len(rows) >= n:
                        return sorted(r["response_id"] for r in rows)
                    await asyncio.sleep(0.1)

        peer.send("response.create", response={"output_modalities": ["text"]})
        first = (await peer.wait_for("response.done"))["response"]["id"]
        assert await metered(1) == [first]  # pod-a's sideband metered it

        monitor_lease = f"{prefix}{{{tenant.tenant_id}}}:monitor:{call_id}"  # holds the monitoring replica's id
        assert await redis_client.hget(monitor_lease, "owner") == b"pod-a"
        proc_a.kill()  # SIGKILL: no drain, no lease release
        killed = time.monotonic()
        await proc_a.wait()
        # pod-b takes the call over once pod-a's monitor lease expires (its ttl is the lease ttl) at its
        # next orphan scan.
        async with asyncio.timeout(LEASE_TTL_S + SCAN_S + SLACK_S):
            while await redis_client.hget(monitor_lease, "owner") != b"pod-b":
                await asyncio.sleep(POLL_S)
        assert time.monotonic() - killed <= LEASE_TTL_S + SCAN_S + SLACK_S

        peer.send("response.create", response={"output_modalities": ["text"]})
        second = (await peer.wait_for("response.done"))["response"]["id"]
        assert await metered(2) == sorted([first, second])  # pod-b took over the call
        await asyncio.sleep(0.5)
        assert await metered(2) == sorted([first, second])  # and nothing was counted twice
        assert not peer.channel_closed.is_set()  # the customer's call never noticed
