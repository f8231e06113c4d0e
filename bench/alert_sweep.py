"""The budget-alert ledger sweep (gateway/alerts/recovery.py) over a big ledger.

Fills a scratch database (created here, dropped at the end) with `--rows` billed rows this UTC
month (nine in ten `usage_ledger`, one in ten `duration_usage`, by `INSERT ... SELECT
generate_series` in chunks, through the same rollup triggers a gateway's writes go through) for
`--tenants` tenants, each with a daily and monthly budget and three thresholds none of them has
reached: the worst case, where every sweep has to read every tenant's spend. Then times
`AlertSweep.run()` (what each replica runs at start and every VOXGATE_ALERT_SWEEP_SECONDS).

    .venv/bin/python bench/alert_sweep.py [--rows 2000000] [--tenants 200] [--runs 10]

VOXGATE_BENCH_PG_ADMIN_DSN (default: VOXGATE_TEST_PG_ADMIN_DSN, else postgres on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.alerts.recovery import AlertSweep
from gateway.storage.migrations import apply_migrations
from gateway.storage.policy_store import PolicyStore

SESSIONS = 20_000
# Row g: session g % SESSIONS, whose tenant is session % tenants; a time spread over [$5, $5 + $6) s.
USAGE_FILL = """
INSERT INTO usage_ledger (response_id, session_id, tenant_id, model, status, occurred_at,
    input_tokens, output_tokens, total_tokens, input_text_tokens, input_audio_tokens, input_image_tokens,
    cached_text_tokens, cached_audio_tokens, cached_image_tokens, output_text_tokens, output_audio_tokens,
    cost_micro_usd, price_version)
SELECT 'resp_' || g, 'vgs_' || (g % $3), 'ten_' || ((g % $3) % $4), 'gpt-realtime', 'completed',
       to_timestamp($5 + (g * 7919) % $6), 900, 700, 1600, 100, 800, 0, 0, 0, 0, 0, 700,
       60000 + g % 1000, 'bench'
FROM generate_series($1::bigint, $2::bigint) AS g
"""
DURATION_FILL = """
INSERT INTO duration_usage (session_id, kind, usage_id, tenant_id, model, occurred_at, active_ms, standby_ms,
    estimated, cost_micro_usd, price_version)
SELECT 'vgs_' || (g % $3), 'translation', 'u' || g, 'ten_' || ((g % $3) % $4), 'gpt-realtime-translate',
       to_timestamp($5 + (g * 7919) % $6), 30000, 0, false, 20000 + g % 500, 'bench'
FROM generate_series($1::bigint, $2::bigint) AS g
"""
SESSIONS_FILL = """
INSERT INTO realtime_sessions (id, tenant_id, transport, started_at)
SELECT 'vgs_' || s, 'ten_' || (s % $2), 'websocket', to_timestamp($3) FROM generate_series(0, $1 - 1) AS s
"""


def admin_dsn() -> str:
    return os.environ.get("VOXGATE_BENCH_PG_ADMIN_DSN") or os.environ.get(
        "VOXGATE_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def dsn_for(database: str) -> str:
    parts = urlsplit(admin_dsn())
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def fill(pool: asyncpg.Pool, rows: int, tenants: int, chunk: int) -> None:
    now = time.time()
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    span = max(int(now - month) - 60, 1)  # this month so far: every row is in the month being swept
    await pool.execute(
        "INSERT INTO tenants (id, name) SELECT 'ten_' || t, 'tenant ' || t FROM generate_series(0, $1 - 1) t", tenants
    )
    await pool.execute(SESSIONS_FILL, SESSIONS, tenants, month)
    usage = rows - rows // 10
    for statement, start, stop in ((USAGE_FILL, 0, usage), (DURATION_FILL, usage, rows)):
        for low in range(start, stop, chunk):
            high = min(low + chunk, stop) - 1
            await pool.execute(statement, low, high, SESSIONS, tenants, month, span)
            print(f"  {high + 1:>11,} rows", flush=True)
    await pool.execute("VACUUM ANALYZE")


async def main(rows: int, tenants: int, runs: int, chunk: int, keep: bool, reuse: str | None) -> None:
    name = reuse or f"voxgate_bench_sweep_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn())
    if reuse is None:
        await admin.execute(f'CREATE DATABASE "{name}"')
    keep = keep or reuse is not None
    try:
        await apply_migrations(dsn_for(name))
        pool = await asyncpg.create_pool(dsn_for(name), min_size=1, max_size=2, command_timeout=3600)
        store = PolicyStore(pool, {}, None)
        if reuse is None:
            began = time.perf_counter()
            await fill(pool, rows, tenants, chunk)
            print(f"filled {rows:,} rows for {tenants} tenants in {time.perf_counter() - began:.0f} s", flush=True)
            budget = {"daily_usd": "100000", "monthly_usd": "1000000", "alert_at": [0.5, 0.8, 1.0]}
            for t in range(tenants):
                await store.set(f"ten_{t}", {"budget": budget}, actor="bench")
        rows = await pool.fetchval("SELECT (SELECT count(*) FROM usage_ledger) + (SELECT count(*) FROM duration_usage)")
        tenants = await pool.fetchval("SELECT count(*) FROM tenants")
        sweep = AlertSweep(pool, store)
        if await sweep.run():  # warm-up; nothing is crossed
            raise SystemExit("a threshold was crossed: the bench's budgets are too small")
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await sweep.run()
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        print(
            f"AlertSweep.run over {rows:,} rows, {tenants} tenants: median {statistics.median(samples):.0f} ms, "
            f"min {samples[0]:.0f} ms, max {samples[-1]:.0f} ms ({runs} runs)"
        )
        await pool.close()
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--reuse", metavar="DATABASE", help="time the sweep on a database an earlier --keep run filled")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.tenants, args.runs, args.chunk, args.keep, args.reuse))
