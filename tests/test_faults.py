"""Faults lose no response: Postgres cut, Redis cut past the lease TTL, SIGKILL, SIGTERM drain.

Each test runs `voxgate serve` as a process in front of a fresh emulator and checks, from outside,
that every response the clients saw (and, where the gateway lived on, every response upstream
started) has exactly one ledger row priced as docs/pricing.md says.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.support.burst import BASE_POLICY, Outcome, Plan, run_session, set_policy
from tests.support.gateway_process import GatewayProcess, gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, TenantKey, make_tenant, start_emulator
from tests.support.observed import Counters, Ledger, Upstream, price_response, session_end_reasons
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fresh_emulator():
    emulator = await start_emulator(tokens_limit=10**12, requests_limit=10**9)
    yield emulator
    await emulator.stop()


@pytest.fixture
async def budgeted(pg_pool) -> TenantKey:
    """A tenant whose policy reserves and settles every response (a budget it never reaches)."""
    tenant = await make_tenant(pg_pool, "fault")
    await set_policy(pg_pool, tenant.tenant_id, {**BASE_POLICY, "budget": {"daily_usd": "1000"}})
    return tenant


def via(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(
        (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, parts.query, parts.fragment)
    )


async def proxy_to(url: str) -> TcpProxy:
    parts = urlsplit(url)
    return await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0).start()


def prefix() -> str:
    return f"vgfault:{secrets.token_hex(4)}:"


async def run(gateway: GatewayProcess, plans: list[Plan]) -> list[Outcome]:
    t0 = time.monotonic()
    return list(await asyncio.gather(*(run_session(gateway.ws_url, plan, t0) for plan in plans)))


def assert_ledger_exact(ledger: Ledger, upstream: Upstream, seen: set[str]) -> None:
    """Every response a client saw is in the ledger once; nothing upstream did not report is; each at its price."""
    assert seen and seen <= ledger.responses.keys()
    assert ledger.response_rows == len(ledger.responses)
    assert ledger.responses.keys() <= upstream.done.keys()
    assert {rid: cost for rid, (_, cost) in ledger.responses.items()} == {
        rid: price_response(upstream.done[rid]) for rid in ledger.responses
    }


async def test_a_postgres_cut_mid_traffic_loses_no_response(
    pg_dsn, pg_pool, fresh_emulator, budgeted, tmp_path
) -> None:
    pg = await proxy_to(pg_dsn)
    env = gateway_env(via(pg_dsn, pg), REDIS_URL, fresh_emulator.base_url, prefix(), UPSTREAM_KEY)
    try:
        async with gateway_process(env, tmp_path) as gateway:
            plans = [Plan(budgeted.tenant_id, budgeted.secret, ("text",) * 12, pause_s=0.25) for _ in range(12)]
            traffic = asyncio.ensure_future(run(gateway, plans))
            await asyncio.sleep(0.8)
            pg.cut()  # every connection to Postgres drops; new ones are refused
            await asyncio.sleep(2.0)
            pg.restore()
            outcomes = await traffic
            await gateway.idle()
    finally:
        await pg.stop()
    seen = {rid for o in outcomes for rid in o.done}
    # The clients kept talking through the cut: every turn got its response.
    assert [len(o.done) for o in outcomes] == [12] * len(plans)
    upstream = Upstream.of(fresh_emulator.sessions)
    ledger = await Ledger.read(pg_pool, [budgeted.tenant_id])
    assert upstream.started == upstream.done.keys() == seen
    assert_ledger_exact(ledger, upstream, seen)
    assert ledger.responses.keys() == seen


async def test_a_redis_cut_longer_than_the_lease_ttl_ends_no_session(
    pg_dsn, pg_pool, fresh_emulator, budgeted, tmp_path
) -> None:
    ttl, reap = 1.0, 0.3
    key_prefix = prefix()
    rd = await proxy_to(REDIS_URL)
    env = gateway_env(
        pg_dsn,
        via(REDIS_URL, rd),
        fresh_emulator.base_url,
        key_prefix,
        UPSTREAM_KEY,
        VOXGATE_LEASE_TTL_SECONDS=str(ttl),
        VOXGATE_REAP_INTERVAL_SECONDS=str(reap),
    )
    redis = aioredis.from_url(REDIS_URL)
    try:
        async with gateway_process(env, tmp_path, instance_id="fault-redis") as gateway:
            # Turns every 0.25 s for ~6 s: before, during and well after a 2.5 s cut (> ttl + reap interval).
            # The cut waits until every session has had a response, so all of them are live when it
            # comes (a fixed delay raced the sessions' start on a loaded CI machine).
            working: set[int] = set()
            all_working = asyncio.Event()

            def first_response(index: int) -> Callable[[str], None]:
                def seen(_: str) -> None:
                    working.add(index)
                    if len(working) == 10:
                        all_working.set()

                return seen

            plans = [
                Plan(budgeted.tenant_id, budgeted.secret, ("text",) * 24, pause_s=0.25, on_done=first_response(i))
                for i in range(10)
            ]
            traffic = asyncio.ensure_future(run(gateway, plans))
            async with asyncio.timeout(30):
                await all_working.wait()
            rd.cut()
            await asyncio.sleep(2.5)
            rd.restore()
            outcomes = await traffic
            # One more session after the outage: admission reads (and if need be rebuilds) the counters.
            [after] = await run(gateway, [Plan(budgeted.tenant_id, budgeted.secret, ("text",))])
            await gateway.idle()
            ledger = await Ledger.read(pg_pool, [budgeted.tenant_id])
            # Failed settles and releases are retried once Redis answers: give them a few seconds.
            deadline = time.monotonic() + 10
            while True:
                counters = await Counters.read(redis, key_prefix, budgeted.tenant_id)
                settled = (counters.spent_day, counters.leases, counters.reserved) == (ledger.cost(), 0, 0)
                if settled or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
        await rd.stop()
    print(f"after the Redis cut: {counters}, ledger {ledger.cost()}")
    assert counters.spent_day == ledger.cost()
    assert counters.leases == 0 and counters.reserved == 0
    # No live session was ended: every client finished all its turns and closed it itself.
    assert [(len(o.done), o.close_code) for o in outcomes] == [(24, 1000)] * len(plans)
    assert len(after.done) == 1
    reasons = await session_end_reasons(pg_pool, [budgeted.tenant_id])
    assert "replica_lost" not in reasons
    assert reasons == {"client_closed": len(plans) + 1}
    seen = {rid for o in [*outcomes, after] for rid in o.done}
    upstream = Upstream.of(fresh_emulator.sessions)
    assert_ledger_exact(ledger, upstream, seen)
    assert ledger.responses.keys() == upstream.started == seen


async def test_sigkill_right_after_response_done_loses_no_response(
    pg_dsn, pg_pool, fresh_emulator, budgeted, tmp_path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    env = gateway_env(pg_dsn, REDIS_URL, fresh_emulator.base_url, prefix(), UPSTREAM_KEY, VOXGATE_SPOOL_DIR=str(spool))
    seen: set[str] = set()
    for _ in range(2):
        async with gateway_process(env, tmp_path, instance_id="fault-kill") as gateway:
            killed_after: list[str] = []

            def kill_on_done(
                response_id: str,
                gateway: GatewayProcess = gateway,
                killed: list[str] = killed_after,
                at: int = len(seen) + 25,
            ) -> None:
                # SIGKILL the moment the 25th response.done of this round reaches a client.
                if not killed and len(seen) + 1 >= at:
                    killed.append(response_id)
                    gateway.proc.kill()
                seen.add(response_id)

            plans = [Plan(budgeted.tenant_id, budgeted.secret, ("text",) * 40, on_done=kill_on_done) for _ in range(8)]
            await run(gateway, plans)
            assert killed_after, "the gateway was never killed"
            assert await gateway.proc.wait() == -signal.SIGKILL
    # A restart on the same spool replays whatever the killed process had made durable.
    async with gateway_process(env, tmp_path, instance_id="fault-kill") as gateway:
        await gateway.idle()
        await asyncio.sleep(0.5)
    ledger = await Ledger.read(pg_pool, [budgeted.tenant_id])
    upstream = Upstream.of(fresh_emulator.sessions)
    missing = seen - ledger.responses.keys()
    assert missing == set(), f"{len(missing)} of {len(seen)} responses the clients saw are not in the ledger"
    assert_ledger_exact(ledger, upstream, seen)


async def test_sigterm_drain_mid_response_loses_no_response(pg_dsn, pg_pool, budgeted, tmp_path) -> None:
    # Paced audio: each response speaks for ~3 s, so SIGTERM finds every session mid-response.
    emulator = await start_emulator(pace_audio=True, tokens_limit=10**12)
    env = gateway_env(
        pg_dsn, REDIS_URL, emulator.base_url, prefix(), UPSTREAM_KEY, VOXGATE_SHUTDOWN_GRACE_SECONDS="0.5"
    )
    sessions = 6
    try:
        async with gateway_process(env, tmp_path, instance_id="fault-term") as gateway:
            plans = [
                Plan(budgeted.tenant_id, budgeted.secret, ("text",), text="tell me a long story about the sea")
                for _ in range(sessions)
            ]
            traffic = asyncio.ensure_future(run(gateway, plans))
            async with asyncio.timeout(15):  # every session's response is speaking
                while (
                    sum(
                        any(e["type"] == "response.output_audio.delta" for e in s.server_events)
                        for s in emulator.sessions
                    )
                    < sessions
                ):
                    await asyncio.sleep(0.05)
            in_flight = {
                e["response"]["id"]
                for s in emulator.sessions
                for e in s.server_events
                if e["type"] == "response.created"
            }
            assert len(in_flight) == sessions
            started = time.monotonic()
            code = await gateway.signal_and_wait(signal.SIGTERM, 20)
            stopped_in = time.monotonic() - started
            outcomes = await traffic
        upstream = Upstream.of(emulator.sessions)
    finally:
        await emulator.stop()
    # A clean exit (uvicorn re-raises the SIGTERM it handled once it has shut down), not a kill.
    assert code in (0, -signal.SIGTERM)
    print(f"SIGTERM: exited in {stopped_in:.2f} s")
    # The gateway told every client it was shutting down.
    assert [(o.close_code, o.close_reason) for o in outcomes] == [(1001, "gateway shutting down")] * sessions
    reasons = await session_end_reasons(pg_pool, [budgeted.tenant_id])
    assert reasons == {"gateway_shutdown": sessions}
    # Every response upstream started was answered with its usage and is in the ledger once.
    ledger = await Ledger.read(pg_pool, [budgeted.tenant_id])
    assert upstream.started == in_flight
    assert upstream.done.keys() == in_flight
    assert ledger.responses.keys() == in_flight
    assert {rid: cost for rid, (_, cost) in ledger.responses.items()} == {
        rid: price_response(upstream.done[rid]) for rid in in_flight
    }
