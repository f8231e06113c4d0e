"""Client-secret sessions end: expired unattached secrets are swept once, attached ones end with their call.

Secrets are minted through a real gateway (the `openai` SDK) from the emulator; browsers
place calls with them straight at the emulator, as they would at OpenAI, with an aiortc peer.
The sweep is driven with an explicit `now` (a secret lives at least 10 s upstream), except
in the one test that proves a replica's own background loop runs it, which moves a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI

from gateway.webrtc.calls_store import Call
from gateway.webrtc.sideband import SECRET_ATTACH_GRACE_SECONDS, SECRET_SWEEP_SECONDS
from gateway.webrtc.upstream_http import call_id_from_location
from tests.conftest import REDIS_URL
from tests.support.clock import FakeClock
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway
from tests.support.webrtc_client import ClientPeer
from tests.test_metrics import sample, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("end_emulated_calls")]

Minted = Any  # openai.types.realtime.ClientSecretCreateResponse


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


async def mint(gateway: Gateway, tenant: TenantKey, seconds: int = 30) -> Minted:
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as client:
        return await client.realtime.client_secrets.create(
            session={"type": "realtime"}, expires_after={"anchor": "created_at", "seconds": seconds}
        )


async def session_row(pool: asyncpg.Pool, secret: Minted) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT s.id, s.transport, s.ended_at, s.end_reason, s.end_detail, s.responses, m.call_id, m.attached_at,"
        " m.expired_at FROM minted_client_secrets m JOIN realtime_sessions s ON s.id = m.session_id"
        " WHERE m.upstream_session_id = $1",
        secret.session.id,
    )
    assert row is not None
    return row


async def direct_call(emulator, peer: ClientPeer, secret: Minted) -> str:
    """What a browser does with the ephemeral key: call OpenAI (here, the emulator) directly."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{emulator.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={"Authorization": f"Bearer {secret.value}", "Content-Type": "application/sdp"},
        )
    assert response.status_code == 201, response.text
    await peer.accept(response.text)
    call_id = call_id_from_location(response.headers["location"])
    assert call_id is not None
    return call_id


async def attach(gateway: Gateway, tenant: TenantKey, call_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/voxgate/calls/{call_id}/attach", headers={"Authorization": f"Bearer {tenant.secret}"}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.05)


def past_grace(secret: Minted, extra: float = 1.0) -> float:
    return secret.expires_at + SECRET_ATTACH_GRACE_SECONDS + extra


# -- never attached ---------------------------------------------------------------------------


async def test_an_unused_secret_ends_as_expired_once_its_grace_has_passed(gateway, emulator, tenant, pg_pool) -> None:
    secret = await mint(gateway, tenant)
    await gateway.settle()
    monitor = gateway.services.calls_monitor
    before = sample(await scrape(gateway), "voxgate_sessions_ended_total", end_reason="client_secret_expired")
    row = await session_row(pg_pool, secret)
    assert (row["transport"], row["ended_at"]) == ("client_secret", None)

    # Expired, but a backend may still attach the call its browser opened: not yet.
    assert row["id"] not in await monitor.sweep_expired_secrets(past_grace(secret, extra=-2.0))
    assert (await session_row(pg_pool, secret))["ended_at"] is None

    assert row["id"] in await monitor.sweep_expired_secrets(past_grace(secret))
    ended = await session_row(pg_pool, secret)
    assert ended["end_reason"] == "client_secret_expired"
    assert ended["ended_at"] == datetime.fromtimestamp(secret.expires_at, UTC)  # when the secret stopped working
    assert "no call was attached" in ended["end_detail"]
    assert (ended["responses"], ended["attached_at"], ended["call_id"]) == (0, None, None)
    assert ended["expired_at"] is not None
    after = sample(await scrape(gateway), "voxgate_sessions_ended_total", end_reason="client_secret_expired")
    assert after >= before + 1

    # Idempotent: a later sweep finds nothing more to do, and changes nothing.
    assert row["id"] not in await monitor.sweep_expired_secrets(past_grace(secret, extra=3600))
    assert await session_row(pg_pool, secret) == ended


async def test_two_replicas_sweeping_at_once_end_each_secret_once(gateway, emulator, tenant, pg_pool, pg_dsn) -> None:
    other = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        secrets = [await mint(gateway, tenant) for _ in range(6)]
        await gateway.settle()
        ids = {(await session_row(pg_pool, s))["id"] for s in secrets}
        now = max(past_grace(s) for s in secrets)
        sweepers = [gateway.services.calls_monitor, other.services.calls_monitor] * 3
        results = await asyncio.gather(*(m.sweep_expired_secrets(now) for m in sweepers))
    finally:
        await other.stop()
    ended_by = [session_id for result in results for session_id in result if session_id in ids]
    assert sorted(ended_by) == sorted(ids)  # every one ended, none twice
    for secret in secrets:
        row = await session_row(pg_pool, secret)
        assert row["end_reason"] == "client_secret_expired"
        assert row["ended_at"] == datetime.fromtimestamp(secret.expires_at, UTC)


async def test_a_backlog_is_swept_in_batches_in_one_sweep(gateway, emulator, tenant, pg_pool) -> None:
    secrets = [await mint(gateway, tenant) for _ in range(5)]
    await gateway.settle()
    store = gateway.services.calls_monitor.store
    now = max(past_grace(s) for s in secrets)
    ended = await store.expire_unattached_secrets(now, SECRET_ATTACH_GRACE_SECONDS, "swept", batch=2)
    for secret in secrets:
        row = await session_row(pg_pool, secret)
        assert row["id"] in ended
        assert (row["end_reason"], row["end_detail"]) == ("client_secret_expired", "swept")


async def asleep_again(clock: FakeClock, sleepers: int) -> None:
    """Wait (real time, bounded) until `sleepers` tasks are waiting on `clock` again."""
    async with asyncio.timeout(10):
        while clock.sleepers < sleepers:
            await asyncio.sleep(0.005)


async def test_the_gateway_sweeps_on_its_own_every_15_seconds(gateway, emulator, tenant, pg_pool, pg_dsn) -> None:
    # A second replica on a fake clock: its own background loop sweeps, on its own cadence,
    # as the test moves time one second at a time instead of waiting for it.
    clock = FakeClock(start=time.time())
    sweeper = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url), clock=clock)
    try:
        secret = await mint(gateway, tenant, seconds=10)  # upstream's shortest lifetime
        await gateway.settle()
        await asleep_again(clock, 1)
        swept_at = None
        while swept_at is None and clock.time() < past_grace(secret, extra=2 * SECRET_SWEEP_SECONDS):
            sleepers = clock.sleepers
            await clock.advance(1.0)
            await asleep_again(clock, sleepers)  # every loop woken has finished its round
            if (await session_row(pg_pool, secret))["end_reason"] == "client_secret_expired":
                swept_at = clock.time()
    finally:
        await sweeper.stop()
    assert swept_at is not None, "the replica never swept the expired secret"
    # Not a moment before the grace ended, and within one sweep interval (plus one loop round) after.
    assert past_grace(secret, extra=0.0) <= swept_at <= past_grace(secret, extra=SECRET_SWEEP_SECONDS + 3.0)


# -- attached ---------------------------------------------------------------------------------


async def test_an_attached_secret_is_never_swept_and_ends_with_its_call(
    gateway, emulator, tenant, pg_pool, peer
) -> None:
    secret = await mint(gateway, tenant)
    call_id = await direct_call(emulator, peer, secret)
    attached = await attach(gateway, tenant, call_id)
    await gateway.settle()
    row = await session_row(pg_pool, secret)
    # The minted session's row is the call's row: the call is metered into it and ends it.
    assert attached["session_id"] == row["id"]
    assert (row["call_id"], row["attached_at"] is not None) == (call_id, True)

    assert row["id"] not in await gateway.services.calls_monitor.sweep_expired_secrets(past_grace(secret, 3600))
    assert (await session_row(pg_pool, secret))["ended_at"] is None

    async def watched() -> bool:
        return gateway.services.calls_monitor.watching(call_id) is not None

    await until(watched, 5)
    emulated = next(c for c in emulator.calls if c.call_id == call_id)
    await emulator.webrtc.end(emulated)  # the call ends upstream; the sideband sees it go

    async def ended() -> bool:
        return (await session_row(pg_pool, secret))["end_reason"] is not None

    await until(ended)
    row = await session_row(pg_pool, secret)
    assert (row["transport"], row["end_reason"]) == ("client_secret", "call_ended")
    state = await pg_pool.fetchval("SELECT state FROM realtime_calls WHERE call_id = $1", call_id)
    assert state == "ended"


async def test_attaching_after_a_sweep_reopens_the_session_for_the_call(
    gateway, emulator, tenant, pg_pool, peer
) -> None:
    secret = await mint(gateway, tenant)
    call_id = await direct_call(emulator, peer, secret)
    await gateway.settle()
    session_id = (await session_row(pg_pool, secret))["id"]
    # The backend is late: the sweep has already ended the session as expired.
    assert session_id in await gateway.services.calls_monitor.sweep_expired_secrets(past_grace(secret))

    await attach(gateway, tenant, call_id)
    reopened = await session_row(pg_pool, secret)
    assert (reopened["ended_at"], reopened["end_reason"], reopened["expired_at"]) == (None, None, None)
    assert reopened["call_id"] == call_id

    async with httpx.AsyncClient() as http:
        hangup = await http.post(
            f"{gateway.base_url}/realtime/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {tenant.secret}"}
        )
    assert hangup.status_code == 200
    await gateway.settle()
    assert (await session_row(pg_pool, secret))["end_reason"] == "client_hangup"


async def test_a_call_gone_before_its_sideband_attached_ends_its_session(
    gateway, emulator, tenant, pg_pool, peer
) -> None:
    # As after a replica died: the call is recorded, but ended upstream before another
    # replica's monitor attached a new sideband.
    secret = await mint(gateway, tenant)
    call_id = await direct_call(emulator, peer, secret)
    await gateway.settle()
    session_id = (await session_row(pg_pool, secret))["id"]
    store = gateway.services.calls_monitor.store
    call = Call(
        call_id=call_id,
        tenant_id=tenant.tenant_id,
        session_id=session_id,
        created_at=time.time(),
        source="attached",
        upstream_session_id=secret.session.id,
    )
    assert await store.record_attached(call)
    await emulator.webrtc.end(next(c for c in emulator.calls if c.call_id == call_id))

    await gateway.services.calls_monitor.attach(call)

    async def ended() -> bool:
        return (await session_row(pg_pool, secret))["end_reason"] is not None

    await until(ended)
    assert (await session_row(pg_pool, secret))["end_reason"] == "call_ended"
    stored = await store.get(call_id)
    assert stored is not None
    assert (stored.state, stored.end_reason) == ("ended", "call_ended")
