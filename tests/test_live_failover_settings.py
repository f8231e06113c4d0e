"""Live WebRTC failover settings (gateway/webrtc/live_failover.py).

A Live sideband's claim lives half a lease TTL and the holder's lease heartbeat comes every third
of it, so a holder that dies just after renewing its claim leaves the session's lease only a sixth
of a TTL past the claim's lapse. A scan that slow or slower would let the reaper end the session
(`replica_lost`) before any replica takes it over, leaving it running upstream unmetered: `serve`
refuses such settings with a one-line error and exit 2."""

from __future__ import annotations

from tests.test_startup_errors import NEVER_DIALLED_DSN, run_serve, serve_env


async def test_a_scan_too_slow_for_the_lease_ttl_is_refused_at_startup() -> None:
    # 1 s is under half of the 6 s TTL (what `serve` once allowed) but not under a sixth of it
    env = serve_env(NEVER_DIALLED_DSN, VOXGATE_LEASE_TTL_SECONDS="6", VOXGATE_CALLS_SCAN_SECONDS="1")
    outcome = await run_serve(env)
    outcome.refused_with("VOXGATE_CALLS_SCAN_SECONDS", "VOXGATE_LEASE_TTL_SECONDS/6")
    assert outcome.returncode == 2
