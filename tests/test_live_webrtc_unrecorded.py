"""A GPT-Live WebRTC session voxgate cannot record is hung up, charged and refused with a 503.

`POST /v1/live/sessions` creates the session upstream first, then records which tenant owns
its id (`live_sessions`). Here real Postgres refuses that insert (a CHECK constraint), finds
or holds it behind a lock past voxgate's bound. Each time the emulator must see the hangup,
the tenant's ledger must hold exactly the 15 s initialisation charge OpenAI bills for the
session, and the caller gets an OpenAI-shaped, retryable 503. An id already owned by another
tenant (a trigger records it first, as a reused id would be) is another tenant's session: voxgate
neither hangs it up nor books anything for it, and answers 502 upstream_bad_response.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from openai import APIStatusError, AsyncOpenAI, InternalServerError

from gateway.storage.policy_store import PolicyStore
from gateway.webrtc import live_calls
from tests.support.harness import TenantKey
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer

pytestmark = [pytest.mark.e2e]

SESSION: dict[str, Any] = {"model": "gpt-live-1", "instructions": "Answer briefly."}
# Published: $0.05/min of session time; the WebRTC create bills 15 s while the session initialises.
INIT_CHARGE_MICRO_USD = (2 * 15 * 50_000 + 60) // 120  # 15 s at 50,000 micro-USD a minute, half up


@pytest.fixture
async def peer() -> AsyncIterator[ClientPeer]:
    client = ClientPeer()
    yield client
    await client.close()


@pytest.fixture
async def client(gateway: Any, tenant: TenantKey) -> AsyncIterator[AsyncOpenAI]:
    openai = AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)
    yield openai
    await openai.close()


async def refuse_the_tenant(conn: asyncpg.Connection, tenant: TenantKey) -> Callable[[], Awaitable[None]]:
    name = f"vg_test_refuse_{secrets.token_hex(4)}"
    await conn.execute(
        f"ALTER TABLE live_sessions ADD CONSTRAINT {name} CHECK (tenant_id <> '{tenant.tenant_id}') NOT VALID"
    )
    return lambda: conn.execute(f"ALTER TABLE live_sessions DROP CONSTRAINT {name}")


async def record_it_for_another_tenant(conn: asyncpg.Connection, tenant: TenantKey) -> Callable[[], Awaitable[None]]:
    """Whatever id upstream returns for the tenant is already recorded (for another tenant) when voxgate inserts it."""
    other = await conn.fetchval("SELECT id FROM tenants WHERE id <> $1 LIMIT 1", tenant.tenant_id)
    assert other is not None
    name = f"vg_test_reuse_{secrets.token_hex(4)}"
    await conn.execute(
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.tenant_id = '{tenant.tenant_id}' THEN
            INSERT INTO live_sessions (live_session_id, tenant_id, session_id, model, created_at)
            VALUES (NEW.live_session_id, '{other}', 'vgs_other_' || NEW.session_id, NEW.model, NEW.created_at);
          END IF;
          RETURN NEW;
        END $$"""
    )
    await conn.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON live_sessions FOR EACH ROW EXECUTE FUNCTION {name}()")

    async def undo() -> None:
        await conn.execute(f"DROP TRIGGER {name} ON live_sessions")
        await conn.execute(f"DROP FUNCTION {name}()")

    return undo


async def lock_the_table(conn: asyncpg.Connection, tenant: TenantKey) -> Callable[[], Awaitable[None]]:
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE live_sessions IN ACCESS EXCLUSIVE MODE")
    return transaction.rollback


@pytest.mark.parametrize("sabotage", [refuse_the_tenant, lock_the_table])
async def test_a_session_that_cannot_be_recorded_is_hung_up_charged_and_refused_with_a_503(
    sabotage: Callable[[asyncpg.Connection, TenantKey], Awaitable[Callable[[], Awaitable[None]]]],
    gateway: Any,
    emulator: Any,
    client: AsyncOpenAI,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    pg_dsn: str,
    peer: ClientPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live_calls, "RECORD_TIMEOUT_S", 1.0)  # the lock case: give up after 1 s, not 5
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_concurrent_sessions": 1}, actor="test")
    upstream_before = len(emulator.live.sessions)
    conn = await asyncpg.connect(pg_dsn)
    undo = await sabotage(conn, tenant)
    try:
        with pytest.raises(InternalServerError) as refused:
            await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    finally:
        await undo()
        await conn.close()

    # The caller: an OpenAI-shaped, retryable 503.
    response = refused.value.response
    assert response.status_code == 503
    assert float(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "session_not_recorded" and set(error) >= {"message", "type", "code", "param"}

    # Upstream: the one session the create made was hung up, not left running unmetered.
    [created] = emulator.live.sessions[upstream_before:]
    assert created.hung_up
    assert created.sidebands == []  # voxgate never held it (it could not meter it)
    owner = await pg_pool.fetchval("SELECT tenant_id FROM live_sessions WHERE live_session_id = $1", created.id)
    assert owner != tenant.tenant_id  # not recorded for the caller (another tenant's, or nobody's)

    # The ledger: the tenant is charged the initialisation OpenAI bills for the session, once.
    async def charged() -> Any:
        return await pg_pool.fetchrow(
            "SELECT s.id, s.transport, s.intent, s.model, s.end_reason, s.cost_micro_usd, "
            "count(d.*) AS rows, sum(d.cost_micro_usd) AS charged, max(d.active_ms) AS active_ms "
            "FROM realtime_sessions s JOIN duration_usage d ON d.session_id = s.id "
            "WHERE s.tenant_id = $1 AND s.ended_at IS NOT NULL GROUP BY s.id",
            tenant.tenant_id,
        )

    row = await until(charged)
    assert (row["transport"], row["intent"], row["model"], row["end_reason"]) == (
        "webrtc",
        "live",
        "gpt-live-1",
        "not_recorded",
    )
    assert (row["rows"], row["charged"], row["active_ms"]) == (1, INIT_CHARGE_MICRO_USD, 15_000)
    assert row["cost_micro_usd"] == INIT_CHARGE_MICRO_USD
    await asyncio.sleep(0.3)  # nothing else lands for the tenant
    sessions = await pg_pool.fetchval("SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
    assert sessions == 1

    # The concurrency lease was given back: the tenant can create (and record) a session again.
    again = ClientPeer()
    try:
        created_again = await client.live.create(
            session=SESSION, transport={"type": "webrtc", "sdp": await again.offer()}
        )
        await client.live.sessions.hangup(created_again.session.id)
    finally:
        await again.close()
    assert (
        await pg_pool.fetchval(
            "SELECT tenant_id FROM live_sessions WHERE live_session_id = $1", created_again.session.id
        )
        == tenant.tenant_id
    )


async def test_an_id_already_recorded_is_neither_hung_up_nor_booked_and_answers_502(
    gateway: Any,
    emulator: Any,
    client: AsyncOpenAI,
    tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    pg_dsn: str,
    peer: ClientPeer,
) -> None:
    await PolicyStore(pg_pool, {}, None).set(tenant.tenant_id, {"max_concurrent_sessions": 1}, actor="test")
    upstream_before = len(emulator.live.sessions)
    conn = await asyncpg.connect(pg_dsn)
    undo = await record_it_for_another_tenant(conn, tenant)
    try:
        with pytest.raises(APIStatusError) as refused:
            await client.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    finally:
        await undo()
        await conn.close()

    response = refused.value.response
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_bad_response" and set(error) >= {"message", "type", "code", "param"}

    # The id belongs to another tenant's session: voxgate takes no action on it upstream...
    [created] = emulator.live.sessions[upstream_before:]
    assert not created.hung_up
    assert created.sidebands == []
    owner = await pg_pool.fetchval("SELECT tenant_id FROM live_sessions WHERE live_session_id = $1", created.id)
    assert owner is not None and owner != tenant.tenant_id
    # ...and books nothing to the caller.
    await asyncio.sleep(0.5)
    sessions = await pg_pool.fetchval("SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
    voice = await pg_pool.fetchval("SELECT count(*) FROM duration_usage WHERE tenant_id = $1", tenant.tenant_id)
    assert (sessions, voice) == (0, 0)

    # The caller's concurrency lease was given back.
    again = ClientPeer()
    try:
        created_again = await client.live.create(
            session=SESSION, transport={"type": "webrtc", "sdp": await again.offer()}
        )
        await client.live.sessions.hangup(created_again.session.id)
    finally:
        await again.close()
