"""Postgres or Redis unreachable: new sessions and requests get a retryable 503, never a 500.

The end-to-end tests run a real gateway whose link to Postgres (or Redis) goes through a TCP
proxy the test cuts: existing connections are reset and new ones refused, as when the
database restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import websockets
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.exceptions import InvalidStatus

from gateway.errors import OUTAGE_LOG_INTERVAL_S, GatewayError, outage_refusal
from gateway.settings import AdminSettings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.clock import FakeClock
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway
from tests.support.tcp_proxy import TcpProxy


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "database_unavailable"),
        (ConnectionResetError(104, "Connection reset by peer"), "database_unavailable"),
        (OSError("Multiple exceptions: [Errno 111] ..., [Errno 99] ..."), "database_unavailable"),
        (TimeoutError(), "database_unavailable"),  # asyncpg's pool wait, or a connect timeout
        (
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            "database_unavailable",
        ),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "database_unavailable"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), "database_unavailable"),
        (
            asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
            "database_unavailable",
        ),
        # Found by a fault review (backends terminated during a burst of admissions): these were 500s.
        (
            asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
            "database_unavailable",
        ),
        (asyncpg.InterfaceError("cannot perform operation: connection is closed"), "database_unavailable"),
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6379."), "live_state_unavailable"),
        (RedisConnectionError("No connection available."), "live_state_unavailable"),  # the pool's wait
        (RedisTimeoutError("Timeout reading from socket"), "live_state_unavailable"),
        # Bugs, bad data and misconfiguration stay 500s.
        (ValueError("bad"), None),
        (KeyError("session"), None),
        (FileNotFoundError(2, "No such file"), None),
        (PermissionError(13, "Permission denied"), None),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (asyncpg.UndefinedTableError("relation does not exist"), None),
        (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), None),
        (RedisResponseError("WRONGTYPE"), None),
        (GatewayError(429, "slow down"), None),  # already a refusal
    ],
)
def test_only_unreachable_dependencies_become_retryable_503s(exc: Exception, code: str | None) -> None:
    refusal = outage_refusal(exc)
    if code is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert (refusal.status, refusal.code, refusal.error_type) == (503, code, "server_error")
        # Postgres restarts take seconds; Redis blips are shorter (gateway/errors.py).
        assert (
            refusal.response_headers()["retry-after"]
            == {"database_unavailable": "2", "live_state_unavailable": "1"}[code]
        )


async def test_an_outage_is_logged_at_most_once_per_interval_of_the_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    down = ConnectionRefusedError(111, "Connection refused")

    def logged() -> int:
        return sum("refusing with 503 database_unavailable" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="voxgate.errors"):
        for _ in range(3):  # a burst of refusals: one line
            assert outage_refusal(down, clock) is not None
        assert logged() == 1
        await clock.advance(OUTAGE_LOG_INTERVAL_S - 0.5)
        assert outage_refusal(down, clock) is not None
        assert logged() == 1
        await clock.advance(0.5)
        assert outage_refusal(down, clock) is not None
        assert logged() == 2


def _via(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, f"{netloc[0]}@{host}" if netloc[1] else host, parts.path, parts.query, ""))


def _target(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.fixture
async def pg_proxy(pg_dsn: str) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(*_target(pg_dsn, 5432)).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(*_target(REDIS_URL, 6379)).start()
    yield proxy
    await proxy.stop()


async def _gateway(pg_dsn: str, redis_url: str, emulator: Any) -> Gateway:
    settings = gateway_settings(pg_dsn, redis_url, emulator.base_url)
    settings = replace(
        settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None)
    )
    return await start_gateway(settings)


def assert_retryable(status: int, headers: Any, body: bytes, code: str) -> None:
    """A 503 the openai SDK retries: OpenAI's error shape and a `retry-after` in whole seconds."""
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["type"], error["code"], error["param"]) == ("server_error", code, None)
    assert "retry" in error["message"]


async def assert_upgrade_refused(gateway: Gateway, tenant: TenantKey, code: str) -> None:
    """Opening a session is refused at the WebSocket upgrade with the retryable 503 `code`."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ):
            pass
    refused = info.value.response
    assert_retryable(refused.status_code, refused.headers, refused.body, code)


async def assert_new_sessions_refused(gateway: Gateway, http: httpx.AsyncClient, tenant: TenantKey, code: str) -> None:
    """Both ways to start a session (a WebSocket, a browser's client secret) get the retryable 503 `code`."""
    await assert_upgrade_refused(gateway, tenant, code)
    secret = await http.post(
        "/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {tenant.secret}"}, json={}
    )
    assert_retryable(secret.status_code, secret.headers, secret.content, code)


async def assert_not_ready(http: httpx.AsyncClient, down: str, up: str) -> None:
    """/readyz is a 503 that names `down` as down and `up` as ok."""
    ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()[down].startswith("down: ")
    assert (ready.json()[up], ready.json()["status"]) == ("ok", "not_ready")


async def assert_session_opens(gateway: Gateway, tenant: TenantKey) -> None:
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


@pytest.mark.e2e
async def test_postgres_down_is_a_retryable_503_everywhere_and_readyz_names_it(
    pg_dsn: str, pg_proxy: TcpProxy, emulator: Any, tenant: TenantKey
) -> None:
    gateway = await _gateway(_via(pg_dsn, pg_proxy), REDIS_URL, emulator)
    bearer = {"Authorization": f"Bearer {tenant.secret}"}
    admin = {"Authorization": f"Bearer {admin_token()}"}
    try:
        await assert_session_opens(gateway, tenant)
        async with httpx.AsyncClient(base_url=gateway.server.http_url, timeout=10) as http:
            pg_proxy.cut()
            # Tenant keys are looked up in Postgres on every upgrade (no cache): a real round trip fails.
            await assert_new_sessions_refused(gateway, http, tenant, "database_unavailable")
            call = await http.get("/v1/realtime/calls/rtc_0123456789abcdef", headers=bearer)
            assert_retryable(call.status_code, call.headers, call.content, "database_unavailable")
            tenants = await http.get("/admin/v1/tenants", headers=admin)
            assert_retryable(tenants.status_code, tenants.headers, tenants.content, "database_unavailable")
            await assert_not_ready(http, "postgres", "redis")
            metrics = (await http.get("/metrics")).text
            assert 'code="database_unavailable",status="503"' in metrics

            pg_proxy.restore()
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert (ready.json()["postgres"], ready.json()["redis"]) == ("ok", "ok")
            await assert_session_opens(gateway, tenant)
            assert (await http.get("/admin/v1/tenants", headers=admin)).status_code == 200
    finally:
        await gateway.stop()


@pytest.mark.e2e
async def test_redis_down_is_a_retryable_503_and_readyz_names_it(
    pg_dsn: str, redis_proxy: TcpProxy, emulator: Any, tenant: TenantKey
) -> None:
    gateway = await _gateway(pg_dsn, _via(REDIS_URL, redis_proxy), emulator)
    try:
        await assert_session_opens(gateway, tenant)
        async with httpx.AsyncClient(base_url=gateway.server.http_url, timeout=10) as http:
            redis_proxy.cut()
            # The tenant has no policy: the default `redis_unavailable: fail_closed` refuses new sessions.
            await assert_new_sessions_refused(gateway, http, tenant, "live_state_unavailable")
            await assert_not_ready(http, "redis", "postgres")

            redis_proxy.restore()
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            await assert_session_opens(gateway, tenant)
    finally:
        await gateway.stop()


@pytest.mark.e2e
async def test_a_postgres_pool_that_stays_busy_past_its_wait_is_a_retryable_503(
    pg_dsn: str, emulator: Any, tenant: TenantKey
) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, database=replace(settings.database, pool_max=2, pool_timeout_seconds=0.3))
    gateway = await start_gateway(settings)
    pool = gateway.services.pool
    try:
        # Every connection busy (a stuck query, a burst). Background loops may hold one for a moment
        # (their bounded share): the test's own acquires wait for it past the request path's wait.
        held = [await pool.acquire(timeout=SETUP_WAIT_S) for _ in range(pool.get_max_size())]
        assert pool.get_idle_size() == 0 and len(held) == 2
        try:
            await assert_upgrade_refused(gateway, tenant, "database_unavailable")
        finally:
            for conn in held:
                await pool.release(conn)
        await assert_session_opens(gateway, tenant)
    finally:
        await gateway.stop()


SETUP_WAIT_S = 10.0  # the test's own setup, not a wait under test


@pytest.mark.e2e
async def test_background_work_takes_a_bounded_share_of_the_pool_and_requests_keep_the_rest(
    pg_dsn: str, emulator: Any, tenant: TenantKey
) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, database=replace(settings.database, pool_max=2, pool_timeout_seconds=0.3))
    gateway = await start_gateway(settings)
    background = gateway.services.background
    assert background.slots == 1  # a quarter of 2 connections, at least one
    try:
        # Slow background queries, more of them than the pool has connections: they take turns in
        # one connection while a new session still gets the other within its 0.3 s wait.
        slow = [asyncio.create_task(background.pool.fetchval("SELECT pg_sleep(0.6)")) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in slow)
        await assert_session_opens(gateway, tenant)
        await asyncio.gather(*slow)
    finally:
        await gateway.stop()


@pytest.mark.e2e
async def test_a_replica_whose_ledger_writer_stopped_is_neither_live_nor_ready(
    pg_dsn: str, emulator: Any, tenant: TenantKey
) -> None:
    # A writer that had ended (a fault review found one way: an error it did not expect) left the
    # replica "ready" while nothing it metered reached Postgres again. Liveness and readiness say so now.
    gateway = await _gateway(pg_dsn, REDIS_URL, emulator)
    try:
        async with httpx.AsyncClient(base_url=gateway.server.http_url, timeout=10) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert (await http.get("/readyz")).json()["ledger_writer"] == "ok"
            task = gateway.services.ledger._task
            assert task is not None
            task.cancel()  # the writer ends
            with contextlib.suppress(asyncio.CancelledError):
                await task
            live = await http.get("/healthz")
            assert (live.status_code, live.json()) == (503, {"status": "ledger_writer_stopped"})
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert (ready.json()["ledger_writer"], ready.json()["status"]) == ("stopped", "not_ready")
    finally:
        await gateway.stop()
