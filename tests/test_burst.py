"""A burst of 300+ sessions on one gateway process: the ledger is exact and the limits hold.

One `voxgate serve` (real uvicorn, real Postgres and Redis, a Redis pool far smaller than the
burst) in front of our emulator. 321 sessions open within one second: a tenant with a daily
budget that the burst crosses (its sessions keep taking voice and text turns until the budget
cuts them), an unlimited tenant (text and voice turns, a third with input transcription) and one
session through the `openai` SDK. Expected figures come from outside the gateway: the emulator's
own record of the usage it reported, priced with constants copied from docs/pricing.md.

The overshoot bound (docs/budgets.md, README): past a daily limit `L`, spend exceeds it by at most
one response per session live at the crossing, each at most its worst case:

    spent - L  <=  sum over live sessions s of max_r cost(r in s)  <=  S x W,
    W = max_output_tokens x audio-out rate + input tokens x dearest input rate.

The budget tenant transcribes nothing (T = 0) and Redis stays up (U = M = 0). W is computed with the
real input, which the gateway's reservation over-estimates, so the asserted bound is never looser.
"""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.support.burst import BurstShape, run_burst
from tests.support.gateway_process import gateway_env, gateway_process
from tests.support.harness import UPSTREAM_KEY, make_tenant, start_emulator
from tests.support.observed import session_end_reasons

pytestmark = pytest.mark.e2e

# Far fewer Redis connections than live sessions (the default is 32): a burst must share the pool,
# never fail on it (calls of one event-loop turn share one round trip, docs/live-state.md "Pools").
REDIS_POOL_SIZE = 8


@pytest.fixture
async def fast_emulator():
    # Fast: no pacing or latency; limits high enough that headroom never refuses the burst.
    emulator = await start_emulator(tokens_limit=10**12, requests_limit=10**9)
    yield emulator
    await emulator.stop()


async def test_a_burst_of_321_sessions_keeps_the_ledger_exact_and_the_budget_bounded(
    pg_dsn, pg_pool, fast_emulator, tmp_path
) -> None:
    shape = BurstShape()
    assert shape.sessions > 300 > REDIS_POOL_SIZE
    prefix = f"vgburst:{secrets.token_hex(4)}:"
    env = gateway_env(
        pg_dsn, REDIS_URL, fast_emulator.base_url, prefix, UPSTREAM_KEY, VOXGATE_REDIS_POOL_SIZE=str(REDIS_POOL_SIZE)
    )
    budget, free = await make_tenant(pg_pool, "burst-budget"), await make_tenant(pg_pool, "burst-free")
    redis = aioredis.from_url(REDIS_URL)
    try:
        async with gateway_process(env, tmp_path) as gateway:
            figures = await run_burst(shape, gateway, fast_emulator, pg_pool, redis, prefix, (budget, free))
            unreachable = gateway.log_lines("live state unreachable")
    finally:
        await redis.aclose()
    print("burst figures:", figures.summary(), "live-state-unreachable log lines:", unreachable)
    for line in figures.describe_lost(fast_emulator.sessions):
        print("lost:", line)

    # Every response upstream started, and every transcription it completed, has exactly one ledger
    # row, and the ledger holds nothing upstream did not report.
    assert figures.lost == set()
    assert figures.extra == set()
    assert figures.client_done <= figures.ledger.responses.keys()
    assert figures.ledger.response_rows == len(figures.upstream.done)
    assert figures.ledger.transcription_rows == len(figures.upstream.transcriptions) > 0
    # Each row is priced as docs/pricing.md says, so the sums agree to the micro-USD.
    assert figures.mispriced == []
    assert figures.ledger.cost() == figures.upstream.cost
    # No live state leaked: no lease, no reservation; and Redis counts what the ledger holds.
    assert figures.leaked_leases == 0
    for tenant_id, counters in figures.counters.items():
        assert counters.reserved == 0, tenant_id
        assert counters.spent_day == figures.ledger.cost(tenant_id), tenant_id
    # The budget was crossed mid-burst (sessions were cut) and the overshoot stays within the bound.
    assert figures.budget_cut > 0
    assert figures.overshoot <= figures.bound_micro_usd
    live = figures.budget_sessions_admitted  # S: all were live at the crossing (they start after the burst opened)
    assert figures.bound_micro_usd <= live * figures.max_response_micro_usd
    assert figures.overshoot <= live * figures.worst_case_micro_usd  # S x W, docs/budgets.md
    reasons = await session_end_reasons(pg_pool, [budget.tenant_id, free.tenant_id])
    assert "replica_lost" not in reasons and "open" not in reasons
    # Every session of the burst was admitted: the pool made them wait, it did not refuse them
    # (docs/live-state.md, "Pools": a burst waits for a free connection instead of failing).
    assert figures.refused == {}
    assert figures.admitted == shape.sessions
