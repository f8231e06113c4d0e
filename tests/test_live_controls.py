"""Issue 15 §3: Live sidebands, forks and controls, only for sessions the calling tenant owns.

Another tenant's `/attach`, `/fork` (WebSocket and POST), `/hangup` and `/content` get the
404 an unknown id gets, and the emulator sees nothing of them. The owner's sideband and
forks work through voxgate with the SDK, and a fork is booked as its own session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from openai import AsyncOpenAI, NotFoundError
from websockets.exceptions import InvalidStatus

from tests.support.harness import TenantKey, make_tenant
from tests.support.waiting import until
from tests.support.webrtc_client import ClientPeer

pytestmark = [pytest.mark.e2e]

SESSION: dict[str, Any] = {"model": "gpt-live-1", "instructions": "Answer briefly.", "store": True}
ACTIVE_MICRO_USD_PER_MIN = 50_000  # gpt-live-1, published


@pytest.fixture
async def peers() -> AsyncIterator[list[ClientPeer]]:
    made: list[ClientPeer] = []
    yield made
    for peer in made:
        await peer.close()


def client_for(gateway: Any, tenant: TenantKey) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0)


async def created_session(gateway: Any, emulator: Any, tenant: TenantKey, peers: list[ClientPeer]) -> str:
    peer = ClientPeer()
    peers.append(peer)
    async with client_for(gateway, tenant) as owner:
        created = await owner.live.create(session=SESSION, transport={"type": "webrtc", "sdp": await peer.offer()})
    await peer.accept(created.transport.sdp)

    async def held() -> bool:
        session = emulator.live.find(created.session.id)
        return session is not None and bool(session.sidebands)

    await until(held)
    return created.session.id


async def test_another_tenants_controls_are_404_and_never_reach_upstream(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peers: list[ClientPeer]
) -> None:
    live_id = await created_session(gateway, emulator, tenant, peers)
    emulated = emulator.live.find(live_id)
    sessions_before, refused_before = len(emulator.live.sessions), len(emulator.live.refused)
    queries_before = list(emulated.sideband_queries)
    fork_peer = ClientPeer()
    peers.append(fork_peer)
    intruder = await make_tenant(pg_pool, "intruder")
    async with client_for(gateway, intruder) as other:
        with pytest.raises(InvalidStatus) as attach:
            async with other.live.sideband.connect(session_id=live_id):
                pass
        assert attach.value.response.status_code == 404
        with pytest.raises(InvalidStatus) as fork_socket:
            async with other.live.forks.connect(session_id=live_id):
                pass
        assert fork_socket.value.response.status_code == 404
        with pytest.raises(NotFoundError):
            await other.live.sessions.fork(live_id, transport={"type": "webrtc", "sdp": await fork_peer.offer()})
        with pytest.raises(NotFoundError):
            await other.live.sessions.hangup(live_id)
        with pytest.raises(NotFoundError):
            await other.live.sessions.download_recording(live_id)
        with pytest.raises(NotFoundError):
            await other.live.sessions.reject(live_id, status_code=486)
    # The emulator saw no attach, fork, hangup, recording or reject for any of them.
    assert emulated.sideband_queries == queries_before
    assert len(emulator.live.sessions) == sessions_before
    assert len(emulator.live.refused) == refused_before
    assert not emulated.hung_up and emulated.rejected_with is None and not emulated.closed
    async with client_for(gateway, tenant) as owner:
        await owner.live.sessions.hangup(live_id)
    assert emulated.hung_up


async def test_the_owner_attaches_its_own_sideband_through_voxgate(
    gateway, emulator, tenant: TenantKey, peers: list[ClientPeer]
) -> None:
    live_id = await created_session(gateway, emulator, tenant, peers)
    async with client_for(gateway, tenant) as owner:
        async with owner.live.sideband.connect(session_id=live_id, graceful_close=True) as sideband:
            await owner.live.sessions.hangup(live_id)
            async with asyncio.timeout(10):
                async for event in sideband:
                    if event.type == "session.closed":
                        assert event.reason == "close_requested"
                        break
        recording = await owner.live.sessions.download_recording(live_id)
        assert recording.content.startswith(b"RIFF")
    assert {"graceful_close": "true"} in emulator.live.find(live_id).sideband_queries


async def test_a_websocket_fork_is_booked_as_its_own_session(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peers: list[ClientPeer]
) -> None:
    live_id = await created_session(gateway, emulator, tenant, peers)
    async with client_for(gateway, tenant) as owner:
        async with owner.live.forks.connect(session_id=live_id) as fork:
            await fork.session.start(session={})
            async with asyncio.timeout(10):
                async for event in fork:
                    if event.type == "session.started":
                        fork_id = event.session.id
                        break
            await asyncio.sleep(1.1)
            await fork.session.close()
            async with asyncio.timeout(10):
                async for event in fork:
                    if event.type == "session.closed":
                        closed_usage = event.usage
                        break
        await owner.live.sessions.hangup(live_id)
    assert emulator.live.find(fork_id).forked_from == live_id
    expected = (2 * int(closed_usage.seconds) * ACTIVE_MICRO_USD_PER_MIN + 60) // 120
    rows = await until(lambda: _both(pg_pool, live_id, fork_id, expected))
    by_id = {r["live_session_id"]: r for r in rows}
    assert by_id[fork_id]["session_id"] != by_id[live_id]["session_id"]  # billed as its own session
    assert {r["tenant_id"] for r in rows} == {tenant.tenant_id}
    assert by_id[fork_id]["intent"] == "live" and by_id[fork_id]["transport"] == "websocket"


async def _both(pool: asyncpg.Pool, live_id: str, fork_id: str, fork_cost: int) -> list[Any] | None:
    """Both sessions' voice rows, once the fork's add up to `fork_cost` (the parent's to anything)."""
    rows = await pool.fetch(
        "SELECT l.live_session_id, l.session_id, s.tenant_id, s.intent, s.transport, sum(d.cost_micro_usd) AS cost "
        "FROM live_sessions l JOIN realtime_sessions s ON s.id = l.session_id "
        "JOIN duration_usage d ON d.session_id = l.session_id AND d.kind = 'live_voice' "
        "WHERE l.live_session_id = ANY($1::text[]) GROUP BY 1, 2, 3, 4, 5",
        [live_id, fork_id],
    )
    costs = {r["live_session_id"]: r["cost"] for r in rows}
    return rows if len(rows) == 2 and costs[fork_id] == fork_cost else None


async def test_a_webrtc_fork_is_its_own_policed_and_billed_session(
    gateway, emulator, tenant: TenantKey, pg_pool: asyncpg.Pool, peers: list[ClientPeer]
) -> None:
    live_id = await created_session(gateway, emulator, tenant, peers)
    fork_peer = ClientPeer()
    peers.append(fork_peer)
    async with client_for(gateway, tenant) as owner:
        forked = await owner.live.sessions.fork(
            live_id, transport={"type": "webrtc", "sdp": await fork_peer.offer()}, session={}
        )
        await fork_peer.accept(forked.transport.sdp)
        fork = emulator.live.find(forked.session.id)
        assert fork.forked_from == live_id
        # The fork's data channel is restricted too: it was created with voxgate's client block.
        assert "response.create" not in fork.protocol.session["client"]["data_channel"]["allowed_client_events"]

        async def held() -> bool:
            return bool(fork.sidebands)

        await until(held)  # voxgate meters the fork on a sideband of its own
        await owner.live.sessions.hangup(forked.session.id)  # the fork is the tenant's to control
        await owner.live.sessions.hangup(live_id)
    rows = await pg_pool.fetch(
        "SELECT live_session_id, session_id, forked_from FROM live_sessions WHERE live_session_id = ANY($1::text[])",
        [live_id, forked.session.id],
    )
    by_id = {r["live_session_id"]: r for r in rows}
    assert by_id[forked.session.id]["forked_from"] == live_id
    assert by_id[forked.session.id]["session_id"] != by_id[live_id]["session_id"]

    closed = next(
        e for o in [*fork.sidebands, *fork.detached] for e in o.server_events if e["type"] == "session.closed"
    )
    usage = closed["usage"]
    expected = (2 * (usage["active_seconds"] * ACTIVE_MICRO_USD_PER_MIN + usage["paused_seconds"] * 20_000) + 60) // 120

    async def fork_booked() -> Any:
        cost = await pg_pool.fetchval(
            "SELECT sum(cost_micro_usd) FROM duration_usage WHERE session_id = $1 AND kind = 'live_voice'",
            by_id[forked.session.id]["session_id"],
        )
        return cost == expected

    await until(fork_booked)  # the fork's own final usage, at the published rates
