"""The Costs API over a big ledger: p95 of a 30-day, `1d`, `group_by=project_id,line_item` query.

Fills a scratch database (created here, dropped at the end) with 1M, 3M and then 10M
`usage_ledger` rows by `INSERT ... SELECT generate_series` in chunks, so every row goes through
the same rollup trigger a gateway's writes do, and times `gateway.finance.costs.query_costs`
(the code the API runs) at each size: three runs of 20 queries after a warm-up, medians of the
three. Writes bench/results/costs-<timestamp>.md.

    .venv/bin/python bench/costs.py [--rows 1000000,3000000,10000000] [--chunk 250000]

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

from gateway.finance.costs import query_costs
from gateway.finance.rates import register_price_rates
from gateway.storage.migrations import apply_migrations
from policies.finance import CostQuery
from policies.prices.builtin import DEFAULT_PRICE_TABLE

TENANTS = 50
SESSIONS = 100_000
SPAN_DAYS = 90
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
RESULTS = Path(__file__).resolve().parent / "results"

# Deterministic pseudo-random rows: session g % SESSIONS (its tenant is session % TENANTS), a time
# spread over the span by a multiplier prime to it, two models; audio in and out on every response,
# text in on a quarter of them (so two or three line items a response, as a voice session bills).
FILL = """
INSERT INTO usage_ledger (response_id, session_id, tenant_id, model, status, occurred_at,
    input_tokens, output_tokens, total_tokens, input_text_tokens, input_audio_tokens, input_image_tokens,
    cached_text_tokens, cached_audio_tokens, cached_image_tokens, output_text_tokens, output_audio_tokens,
    cost_micro_usd, price_version)
SELECT 'resp_' || g, 'vgs_' || (g % $3), 'ten_' || ((g % $3) % $4), m.model, 'completed',
       to_timestamp($5 + (g * 7919) % $6),
       t.text_in + t.audio_in, t.text_out + t.audio_out, t.text_in + t.audio_in + t.text_out + t.audio_out,
       t.text_in, t.audio_in, 0, t.cached, 0, 0, t.text_out, t.audio_out,
       ((t.text_in - t.cached) * 4 + t.cached / 2 + t.audio_in * 32 + t.text_out * 16 + t.audio_out * 64)::bigint,
       m.version
FROM generate_series($1::bigint, $2::bigint) AS g
CROSS JOIN LATERAL (SELECT CASE WHEN g % 4 = 0 THEN 50 + g % 200 ELSE 0 END AS text_in, 0 AS cached,
                           200 + g % 800 AS audio_in, 0 AS text_out, 300 + g % 900 AS audio_out) AS t
CROSS JOIN LATERAL (SELECT CASE WHEN g % 3 = 0 THEN 'gpt-realtime-mini' ELSE 'gpt-realtime' END AS model,
                           CASE WHEN g % 3 = 0 THEN $7 ELSE $8 END AS version) AS m
"""
SESSIONS_FILL = """
INSERT INTO realtime_sessions (id, tenant_id, api_key_id, transport, started_at, end_user_hash, tags)
SELECT 'vgs_' || s, 'ten_' || (s % $2), NULL, 'websocket', to_timestamp($3),
       CASE WHEN s % 4 = 0 THEN 'eu_' || (s % 1000) END,
       CASE s % 4 WHEN 0 THEN '{}' WHEN 1 THEN '{"team":"voice"}' ELSE '{"team":"ops","task":"triage"}' END::jsonb
FROM generate_series(0, $1 - 1) AS s
"""


def admin_dsn() -> str:
    return os.environ.get("VOXGATE_BENCH_PG_ADMIN_DSN") or os.environ.get(
        "VOXGATE_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def dsn_for(database: str) -> str:
    parts = urlsplit(admin_dsn())
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def fill(pool: asyncpg.Pool, start: int, stop: int, chunk: int) -> float:
    began = time.perf_counter()
    versions = (DEFAULT_PRICE_TABLE.version_for("gpt-realtime-mini"), DEFAULT_PRICE_TABLE.version_for("gpt-realtime"))
    for low in range(start, stop, chunk):
        high = min(low + chunk, stop) - 1
        await pool.execute(FILL, low, high, SESSIONS, TENANTS, T0, SPAN_DAYS * 86400, *versions)
        print(f"  {high + 1:>11,} rows", flush=True)
    await pool.execute("VACUUM ANALYZE cost_rollup_1h")
    await pool.execute("VACUUM ANALYZE cost_rollup_15m")
    return time.perf_counter() - began


async def timings(pool: asyncpg.Pool, query: CostQuery, runs: int = 3, per_run: int = 20) -> tuple[float, float, int]:
    """Medians over `runs` of (p50 ms, p95 ms) of `per_run` queries, and the result rows of one."""
    page = await query_costs(pool, query)  # warm-up
    results = sum(len(b.results) for b in page.buckets)
    p50s, p95s = [], []
    for _ in range(runs):
        samples = []
        for _ in range(per_run):
            began = time.perf_counter()
            await query_costs(pool, query)
            samples.append((time.perf_counter() - began) * 1000)
        samples.sort()
        p50s.append(statistics.median(samples))
        p95s.append(samples[int(0.95 * (len(samples) - 1))])
    return statistics.median(p50s), statistics.median(p95s), results


async def main(sizes: list[int], chunk: int) -> None:
    name = f"voxgate_bench_costs_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn())
    await admin.execute(f'CREATE DATABASE "{name}"')
    lines: list[str] = []
    out = RESULTS / f"costs-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
    try:
        await apply_migrations(dsn_for(name))
        pool = await asyncpg.create_pool(dsn_for(name), min_size=1, max_size=2, command_timeout=3600)
        await register_price_rates(pool, DEFAULT_PRICE_TABLE)
        await pool.execute(
            "INSERT INTO tenants (id, name) SELECT 'ten_' || t, 'tenant ' || t FROM generate_series(0, $1 - 1) t",
            TENANTS,
        )
        await pool.execute(SESSIONS_FILL, SESSIONS, TENANTS, T0)
        window = T0 + 45 * 86400
        day = CostQuery(start_time=window, end_time=window + 30 * 86400, limit=31, group_by=("project_id", "line_item"))
        quarter = CostQuery(**{**_fields(day), "tz": "Asia/Kathmandu"})
        tagged = CostQuery(**{**_fields(day), "group_by": ("project_id", "tag"), "tag_key": "team"})
        lines += [
            f"# Costs API benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Ledger: {TENANTS} tenants, {SESSIONS:,} sessions, two models, rows spread over {SPAN_DAYS} days;",
            "query: 30 days, `bucket_width=1d`, `group_by=project_id,line_item` (`query_costs`, the API's code),",
            "3 runs x 20 queries after a warm-up; medians of the three runs (the two 15-minute-rollup",
            "columns: one run of 5). Machine: 2 cores shared with other work.",
            "",
            "| ledger rows | fill s | 1h rollup rows | 15m rollup rows | UTC p50 ms | UTC p95 ms"
            " | Kathmandu p95 ms (15m) | by tag p95 ms (15m) | results |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        filled = 0
        for size in sizes:
            print(f"filling to {size:,} rows", flush=True)
            seconds = await fill(pool, filled, size, chunk)
            filled = size
            hourly = await pool.fetchval("SELECT count(*) FROM cost_rollup_1h")
            quarterly = await pool.fetchval("SELECT count(*) FROM cost_rollup_15m")
            p50, p95, results = await timings(pool, day)
            # The 15-minute rollup's queries are slower by far: one run of five, for scale.
            _, q95, _ = await timings(pool, quarter, runs=1, per_run=5)
            _, t95, _ = await timings(pool, tagged, runs=1, per_run=5)
            cells = [f"{size:,}", f"{seconds:.0f}", f"{hourly:,}", f"{quarterly:,}", f"{p50:.1f}", f"{p95:.1f}"]
            line = "| " + " | ".join([*cells, f"{q95:.1f}", f"{t95:.1f}", f"{results:,}"]) + " |"
            print(line, flush=True)
            lines.append(line)
            _write(out, lines)
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"wrote {out}")


def _write(out: Path, lines: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def _fields(query: CostQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in query.__dataclass_fields__}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,3000000,10000000")
    parser.add_argument("--chunk", type=int, default=500_000)
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.rows.split(",")], args.chunk))
