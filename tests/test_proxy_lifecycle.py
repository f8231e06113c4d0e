"""How proxied sessions end: expiry, unreachable upstream, oversized frames, shutdown and drain."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import REDIS_URL
from tests.support.harness import TenantKey, gateway_settings, start_emulator, start_gateway
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}"}


async def recv_until_closed(ws: websockets.ClientConnection, seconds: float = 5.0) -> list[dict]:
    events = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(seconds):
            while True:
                events.append(json.loads(await ws.recv()))
    return events


async def test_upstream_session_expiry_is_passed_on_and_recorded(pg_dsn, pg_pool, tenant) -> None:
    emulator = await start_emulator(max_session_seconds=0.5)
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    try:
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
            events = await recv_until_closed(ws)
        errors = [e for e in events if e["type"] == "error"]
        assert [e["error"]["code"] for e in errors] == ["session_expired"]
        await gateway.settle()
        reason = await pg_pool.fetchval(
            "SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id
        )
        assert reason == "session_expired"
    finally:
        await gateway.stop()
        await emulator.stop()


async def test_unreachable_upstream_is_a_502_and_a_reset_mid_session_is_1014(pg_dsn, pg_pool, emulator, tenant):
    proxy = await TcpProxy("127.0.0.1", emulator.port).start()
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, f"http://127.0.0.1:{proxy.port}/v1"))
    try:
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            proxy.cut()  # the network between voxgate and upstream fails
            await recv_until_closed(ws)
            assert ws.close_code == 1014
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)):
                pass
        assert info.value.response.status_code == 502
        assert json.loads(info.value.response.body)["error"]["code"] == "upstream_unreachable"
        await gateway.settle()
        reasons = await pg_pool.fetch("SELECT end_reason FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id)
        assert [r["end_reason"] for r in reasons] == ["upstream_error"]
    finally:
        await gateway.stop()
        await proxy.stop()


async def test_oversized_client_message_closes_with_1009(pg_dsn, emulator, tenant) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url, max_message_bytes=64 * 1024)
    gateway = await start_gateway(settings)
    try:
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant), max_size=None
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 100_000}))
            await recv_until_closed(ws)
            assert ws.close_code == 1009
    finally:
        await gateway.stop()


async def test_shutdown_drains_then_closes_live_sessions_with_1001(pg_dsn, pg_pool, emulator, tenant) -> None:
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url, shutdown_grace_seconds=0.5))
    async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        stopping = asyncio.create_task(gateway.stop())
        await asyncio.sleep(0.1)
        # While draining, the instance refuses new sessions with a retryable 503...
        assert gateway.services.live.draining
        with pytest.raises((InvalidStatus, OSError)) as info:
            async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)):
                pass
        if isinstance(info.value, InvalidStatus):
            assert info.value.response.status_code == 503
            assert json.loads(info.value.response.body)["error"]["code"] == "gateway_draining"
        # ...and ends the live one with 1001 once the grace period is over.
        await recv_until_closed(ws)
        assert ws.close_code == 1001
        await stopping
    row = await pg_pool.fetchrow(
        "SELECT end_reason, ended_at FROM realtime_sessions WHERE tenant_id = $1", tenant.tenant_id
    )
    assert row["end_reason"] == "gateway_shutdown" and row["ended_at"] is not None


async def test_health_and_readiness(gateway) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        missing = await http.get("/v1/nope")
        assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "code", "param"}
        wrong = await http.get("/v1/realtime")
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "websocket_required"


async def test_shutdown_does_not_wait_forever_for_a_stuck_database_connection(
    pg_dsn, pg_pool, emulator, monkeypatch
) -> None:
    """A Postgres connection still in use at shutdown (a query stuck on a lock) is terminated
    after POOL_CLOSE_TIMEOUT_SECONDS instead of holding the pod in Terminating."""
    import gateway.app

    monkeypatch.setattr(gateway.app, "POOL_CLOSE_TIMEOUT_SECONDS", 1.0)
    gw = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))
    pool = gw.services.pool
    blocker = await pg_pool.acquire()
    try:
        await blocker.execute("CREATE TABLE IF NOT EXISTS shutdown_lock_probe (id int)")
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE shutdown_lock_probe IN ACCESS EXCLUSIVE MODE")
            stuck = asyncio.create_task(pool.fetchval("SELECT count(*) FROM shutdown_lock_probe"))  # waits on the lock
            await asyncio.sleep(0.2)
            assert not stuck.done()
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(gw.stop(), 15)
            assert asyncio.get_running_loop().time() - started < 4  # the 1 s bound, not the 5 s default
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):  # terminated under it
                await stuck
    finally:
        await blocker.execute("DROP TABLE IF EXISTS shutdown_lock_probe")
        await pg_pool.release(blocker)


async def test_realtime_reached_through_plain_asgi_is_refused_with_an_openai_shaped_501(
    pg_dsn, emulator, tenant
) -> None:
    """A server not wired with voxgate's relay (here: uvicorn without `realtime_relay`) refuses, never relays."""
    from gateway.app import create_app
    from gateway.server import start_server

    server = await start_server(create_app(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)))
    try:
        url = f"ws://{server.host}:{server.port}/v1/realtime?model=gpt-realtime"
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(url, additional_headers=auth(tenant)):
                pass
        assert info.value.response.status_code == 501
        body = json.loads(info.value.response.body)
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert body["error"]["code"] == "relay_unavailable"
    finally:
        await server.stop()
