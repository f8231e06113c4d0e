"""Refusals before the upgrade that docs/close-codes.md lists, each through a real gateway and emulator."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from emulator import Faults
from tests.conftest import REDIS_URL
from tests.support.harness import TenantKey, gateway_settings, start_gateway

pytestmark = pytest.mark.e2e


async def refusal(ws_url: str, tenant: TenantKey, query: str = "model=gpt-realtime") -> tuple[int, Any, dict[str, Any]]:
    """(status, headers, error) of a handshake the gateway must refuse."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(
            f"{ws_url}?{query}", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ):
            pass
    response = info.value.response
    error: dict[str, Any] = json.loads(response.body)["error"]
    assert sorted(error) == ["code", "message", "param", "type"]  # OpenAI's error shape
    return response.status_code, response.headers, error


async def test_upstream_429_is_passed_on_with_its_retry_after(gateway, emulator, tenant) -> None:
    before = len(emulator.sessions)
    emulator.faults = Faults(connect_status=429, retry_after_s=4)
    status, headers, error = await refusal(gateway.ws_url, tenant)
    assert (status, headers["retry-after"]) == (429, "4")
    # docs/close-codes.md: upstream's code (the emulator answers OpenAI's `rate_limit_exceeded`).
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
    assert len(emulator.sessions) == before


@pytest.mark.parametrize("upstream_status", [401, 403])
async def test_upstream_refusing_voxgates_own_key_is_a_502_gateway_misconfiguration(
    gateway, emulator, tenant, upstream_status: int
) -> None:
    emulator.faults = Faults(connect_status=upstream_status)
    status, _, error = await refusal(gateway.ws_url, tenant)
    # docs/close-codes.md: the key upstream refused is voxgate's, not the tenant's.
    assert (status, error["code"]) == (502, "upstream_auth_failed")


async def test_call_id_on_the_proxy_path_is_400_before_any_upstream_cost(gateway, emulator, tenant) -> None:
    before = len(emulator.sessions)
    status, _, error = await refusal(gateway.ws_url, tenant, "model=gpt-realtime&call_id=rtc_abc")
    assert (status, error["code"], error["param"]) == (400, "unsupported_parameter", "call_id")
    assert len(emulator.sessions) == before


async def test_a_slow_upstream_handshake_is_a_retryable_503_at_the_connect_timeout(pg_dsn, emulator, tenant) -> None:
    timeout = 0.5
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(settings, upstream=replace(settings.upstream, connect_timeout_seconds=timeout))
    gateway = await start_gateway(settings)
    try:
        # One session first: a fresh gateway's first admission also opens its pools and loads its
        # scripts, which is not the wait this bound is about.
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {tenant.secret}"}
        ) as warm:
            assert json.loads(await warm.recv())["type"] == "session.created"
        emulator.faults = Faults(connect_delay_s=2.0)  # past the timeout and its slack
        began = time.monotonic()
        status, headers, error = await refusal(gateway.ws_url, tenant)
        took = time.monotonic() - began
    finally:
        emulator.faults = Faults()
        await gateway.stop()
    assert (status, error["code"]) == (503, "upstream_timeout")
    assert int(headers["retry-after"]) >= 1
    # VOXGATE_UPSTREAM_CONNECT_TIMEOUT bounds the wait; slack: admission's Postgres and Redis round
    # trips and the client's own handshake on a loaded 2-core machine.
    assert timeout <= took <= timeout + 0.5
