"""Live WebRTC failover settings (gateway/webrtc/live_failover.py).

A scan slower than half a lease TTL would let the reaper end a dead replica's Live WebRTC session
(`replica_lost`) before any replica takes it over, leaving it running upstream unmetered: `serve`
refuses such settings with a one-line error and exit 2."""

from __future__ import annotations

from tests.test_startup_errors import NEVER_DIALLED_DSN, run_serve, serve_env


async def test_a_scan_too_slow_for_the_lease_ttl_is_refused_at_startup() -> None:
    env = serve_env(NEVER_DIALLED_DSN, VOXGATE_LEASE_TTL_SECONDS="4", VOXGATE_CALLS_SCAN_SECONDS="2")
    outcome = await run_serve(env)
    outcome.refused_with("VOXGATE_CALLS_SCAN_SECONDS", "VOXGATE_LEASE_TTL_SECONDS/2")
    assert outcome.returncode == 2
