"""Admission reads the gateway's clock (`GatewayServices.clock`), not the wall: a start-rate
window on a fake clock opens when the test moves time, not a minute later."""

from __future__ import annotations

import time

import pytest

from tests.conftest import REDIS_URL
from tests.support.clock import FakeClock
from tests.support.harness import gateway_settings, start_gateway
from tests.test_documented_promises import refused_before_upgrade
from tests.test_enforcement_e2e import connect, next_of, set_policy

pytestmark = pytest.mark.e2e


async def test_the_start_rate_window_moves_with_the_gateways_clock(emulator, tenant, pg_pool, pg_dsn) -> None:
    await set_policy(pg_pool, tenant, session_starts_per_minute=1)
    clock = FakeClock(start=time.time())
    gateway = await start_gateway(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url), clock=clock)
    try:
        ws = await connect(gateway, tenant)
        await next_of(ws, "session.created")
        await ws.close()
        refused = await refused_before_upgrade(gateway, tenant)
        # No time has passed on the gateway's clock, however long the wall took.
        assert (refused.status_code, refused.headers["retry-after-ms"]) == (429, "60000")
        await clock.advance(59.5)
        assert (await refused_before_upgrade(gateway, tenant)).headers["retry-after-ms"] == "500"
        await clock.advance(0.5)  # the first start leaves the window
        ws = await connect(gateway, tenant)
        await next_of(ws, "session.created")
        await ws.close()
    finally:
        await gateway.stop()
