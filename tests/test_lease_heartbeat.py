"""README config table / docs/live-state.md: a session's lease lives `VOXGATE_LEASE_TTL_SECONDS` without a
heartbeat, and heartbeats come every third of it. Observed in Redis, through a real gateway and session."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from gateway.settings import EnforcementSettings
from tests.conftest import REDIS_URL
from tests.support.harness import gateway_settings, start_gateway
from tests.test_enforcement_e2e import connect, next_of

pytestmark = pytest.mark.e2e

TTL_S = 1.5  # small, so several heartbeats happen in a couple of seconds
BEAT_S = TTL_S / 3  # the documented interval
POLL_S = 0.005
# Tolerance: the heartbeat loop sleeps BEAT_S, then renews in one pipelined Redis round trip, so each
# interval is BEAT_S plus that round trip plus event-loop delay (a few ms idle; on the shared 2-core CI
# machine, up to ~100 ms). Never shorter than BEAT_S (an asyncio sleep does not end early; 10 ms for the
# two clocks involved). The median must sit within 50 ms of BEAT_S: a loop at TTL/2 or TTL/4 fails both.
EARLY_S = 0.01
LATE_S = 0.15
MEDIAN_LATE_S = 0.05


async def test_leases_are_renewed_every_third_of_the_ttl(pg_dsn, emulator, tenant) -> None:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(
        settings,
        enforcement=EnforcementSettings(lease_ttl_seconds=TTL_S, reap_interval_seconds=0.5, calls_scan_seconds=0.0),
    )
    gateway = await start_gateway(settings)
    redis = aioredis.from_url(REDIS_URL)
    leases = f"{settings.redis.key_prefix}{{{tenant.tenant_id}}}:leases"
    try:
        ws = await connect(gateway, tenant)
        await next_of(ws, "session.created")
        # (score = expiry = the renewal's wall-clock time + TTL, wall-clock time this test saw it at)
        seen: list[tuple[float, float]] = []
        previous_poll = time.time()
        deadline = time.monotonic() + 5 * BEAT_S + 0.3
        while time.monotonic() < deadline:
            members = await redis.zrange(leases, 0, -1, withscores=True)
            polled = time.time()
            assert len(members) == 1, members  # this session's lease, never lapsed or duplicated
            score = float(members[0][1])
            if not seen or score != seen[-1][0]:
                # A renewal sets the expiry to its own time + TTL: between the previous poll and this one.
                assert previous_poll - 0.05 <= score - TTL_S <= polled, (previous_poll, score, polled)
                seen.append((score, polled))
            previous_poll = polled
            await asyncio.sleep(POLL_S)
        await ws.close()
    finally:
        await gateway.stop()
        await redis.aclose()
    renewals = [score - TTL_S for score, _ in seen]
    # seen[0] is the lease taken at admission; the loop's phase against it is arbitrary, so the first gap
    # is at most one interval; every later gap is one interval.
    assert len(renewals) >= 5, renewals
    assert renewals[1] - renewals[0] <= BEAT_S + LATE_S
    gaps = [b - a for a, b in itertools.pairwise(renewals[1:])]
    assert all(BEAT_S - EARLY_S <= gap <= BEAT_S + LATE_S for gap in gaps), gaps
    assert statistics.median(gaps) <= BEAT_S + MEDIAN_LATE_S, gaps
