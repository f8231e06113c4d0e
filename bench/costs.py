"""The Costs API over a big ledger: p95 of a 30-day, `1d`, `group_by=project_id,line_item` query.

Fills a scratch database (created here, dropped at the end) with 1M, 3M and then 10M
`usage_ledger` rows by `INSERT ... SELECT generate_series` in chunks, and times
`gateway.finance.costs.query_costs` (the code the API runs) at each size: three runs of 20
queries after a warm-up, medians of the three. Writes bench/results/costs-<timestamp>.md.

The rollups are what the trigger would have written, built faster: with the trigger off, each
chunk's rows are split into line items by the trigger's own function (`cost_usage_lines`) and
summed into a staging table, and at each size every rollup is rebuilt from those sums (the 15-
minute rollup's indexes built after its rows). The sums the trigger's upserts reach are the
same; every size checks that each rollup sums to the ledger. `--via-trigger` fills through the
trigger instead (about 4,500 rows/s on 2 shared cores).

    .venv/bin/python bench/costs.py [--rows 1000000,3000000,10000000] [--chunk 500000] [--via-trigger] [--keep]

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
VERSIONS = (DEFAULT_PRICE_TABLE.version_for("gpt-realtime-mini"), DEFAULT_PRICE_TABLE.version_for("gpt-realtime"))

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


# The fast fill. A row's model, version, tokens and cost depend on g only through g % COMBOS
# (lcm of the moduli in FILL), so its line items are those of the row g % COMBOS: the trigger's own
# split (`cost_usage_lines`) is run once on those COMBOS rows (their tenant_id carries the index),
# and every rollup is rebuilt at each size from the generated rows' dimensions and these lines.
COMBOS = 7200
COMBO_LINES = f"""
CREATE UNLOGGED TABLE bench_combo_rows (LIKE usage_ledger INCLUDING DEFAULTS);
{FILL.replace("INSERT INTO usage_ledger", "INSERT INTO bench_combo_rows")};
UPDATE bench_combo_rows SET tenant_id = substr(response_id, 6), session_id = 'none';
CREATE UNLOGGED TABLE bench_combo AS
SELECT l.tenant_id::int AS k, l.model, l.line_item, l.unit, l.quantity, l.amount
FROM cost_usage_lines(ARRAY(SELECT ROW(c.*)::usage_ledger FROM bench_combo_rows c)) AS l;
"""
REBUILD_15M = """
INSERT INTO cost_rollup_15m
SELECT date_bin('15 minutes', to_timestamp($2 + (g * 7919) % $3), timestamptz '2000-01-01 00:00:00+00'),
       'ten_' || ((g % $4) % $5), coalesce(s.api_key_id, ''), c.model, c.line_item, coalesce(s.end_user_hash, ''),
       coalesce(s.tags, '{}'::jsonb), min(c.unit), sum(c.quantity), sum(c.amount)
FROM generate_series(0::bigint, $1::bigint - 1) AS g
JOIN bench_combo c ON c.k = g % $6
JOIN realtime_sessions s ON s.id = 'vgs_' || (g % $4)
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
REBUILD_COARSE = """
INSERT INTO {table} (bucket_start, tenant_id, model, line_item, unit, quantity, amount_micro_usd)
SELECT date_bin('{grain}', bucket_start, timestamptz '2000-01-01 00:00:00+00'), tenant_id, model, line_item,
       min(unit), sum(quantity), sum(amount_micro_usd)
FROM cost_rollup_15m GROUP BY 1, 2, 3, 4
"""
ROLLUPS = ("cost_rollup_15m", "cost_rollup_15m_slim", "cost_rollup_1h", "cost_rollup_1d")
TOTALS = "SELECT " + ", ".join(
    f"(SELECT coalesce(sum({column}), 0) FROM {table})::bigint"
    for table, column in (("usage_ledger", "cost_micro_usd"), *((t, "amount_micro_usd") for t in ROLLUPS))
)


async def fill(pool: asyncpg.Pool, start: int, stop: int, chunk: int, fast: bool) -> float:
    began = time.perf_counter()
    for low in range(start, stop, chunk):
        high = min(low + chunk, stop) - 1
        await pool.execute(FILL, low, high, SESSIONS, TENANTS, T0, SPAN_DAYS * 86400, *VERSIONS)
        print(f"  {high + 1:>11,} rows", flush=True)
    if fast:
        await rebuild(pool, stop)
    totals = await pool.fetchrow(TOTALS)
    if len(set(totals)) != 1:
        raise SystemExit(f"the rollups do not sum to the ledger: {tuple(totals)}")
    for table in ROLLUPS:
        await pool.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - began


async def rebuild(pool: asyncpg.Pool, rows: int) -> None:
    """Every rollup for the ledger's first `rows` rows, the 15-minute rollup's indexes built after its rows."""
    print("  rebuilding the rollups", flush=True)
    async with pool.acquire() as conn, conn.transaction():
        indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cost_rollup_15m'")
        await conn.execute("TRUNCATE " + ", ".join(ROLLUPS))
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        await conn.execute("SET LOCAL maintenance_work_mem = '512MB'; SET LOCAL work_mem = '256MB'")
        await conn.execute(REBUILD_15M, rows, T0, SPAN_DAYS * 86400, SESSIONS, TENANTS, COMBOS)
        for index in indexes:
            await conn.execute(index["indexdef"])
        for table, grain in (
            ("cost_rollup_15m_slim", "15 minutes"),
            ("cost_rollup_1h", "1 hour"),
            ("cost_rollup_1d", "1 day"),
        ):
            await conn.execute(REBUILD_COARSE.format(table=table, grain=grain))


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


async def main(sizes: list[int], chunk: int, via_trigger: bool, keep: bool = False) -> None:
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
        if not via_trigger:
            # The rollup trigger and the foreign-key checks (every row's session and tenant exist
            # by construction) are off; the rollups are rebuilt from the staged line items.
            await pool.execute("ALTER TABLE usage_ledger DISABLE TRIGGER ALL")
            async with pool.acquire() as conn:  # the combo rows' line items, by the trigger's split
                await conn.execute(
                    COMBO_LINES.replace("$1::bigint", "0::bigint")
                    .replace("$2::bigint", f"{COMBOS - 1}::bigint")
                    .replace("$3", str(SESSIONS))
                    .replace("$4", str(TENANTS))
                    .replace("$5", str(T0))
                    .replace("$6", str(SPAN_DAYS * 86400))
                    .replace("$7", f"'{VERSIONS[0]}'")
                    .replace("$8", f"'{VERSIONS[1]}'")
                )
        window = T0 + 45 * 86400
        day = CostQuery(start_time=window, end_time=window + 30 * 86400, limit=31, group_by=("project_id", "line_item"))
        quarter = CostQuery(**{**_fields(day), "tz": "Asia/Kathmandu"})
        tagged = CostQuery(**{**_fields(day), "group_by": ("project_id", "tag"), "tag_key": "team"})
        lines += [
            f"# Costs API benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Ledger: {TENANTS} tenants, {SESSIONS:,} sessions, two models, rows spread over {SPAN_DAYS} days;",
            "query: 30 days, `bucket_width=1d`, `group_by=project_id,line_item` (`query_costs`, the API's code),",
            "3 runs x 20 queries after a warm-up; medians of the three runs (the Kathmandu and tag",
            "columns: one run of 5). Machine: 2 cores shared with other work.",
            "",
            "| ledger rows | fill s | 1h rollup rows | 15m rollup rows | UTC p50 ms | UTC p95 ms"
            " | Kathmandu p95 ms (1h + slim 15m) | by tag p95 ms (15m) | results |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        filled = 0
        for size in sizes:
            print(f"filling to {size:,} rows", flush=True)
            seconds = await fill(pool, filled, size, chunk, fast=not via_trigger)
            filled = size
            hourly = await pool.fetchval("SELECT count(*) FROM cost_rollup_1h")
            quarterly = await pool.fetchval("SELECT count(*) FROM cost_rollup_15m")
            p50, p95, results = await timings(pool, day)
            # A :45 zone (hourly rollup and the cut hours' quarters) and a tag grouping (the full
            # 15-minute rollup, slower by far): one run of five each, for scale.
            _, q95, _ = await timings(pool, quarter, runs=1, per_run=5)
            _, t95, _ = await timings(pool, tagged, runs=1, per_run=5)
            cells = [f"{size:,}", f"{seconds:.0f}", f"{hourly:,}", f"{quarterly:,}", f"{p50:.1f}", f"{p95:.1f}"]
            line = "| " + " | ".join([*cells, f"{q95:.1f}", f"{t95:.1f}", f"{results:,}"]) + " |"
            print(line, flush=True)
            lines.append(line)
            _write(out, lines)
        await pool.close()
    finally:
        if keep:
            print(f"kept {dsn_for(name)}")
        else:
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
    parser.add_argument(
        "--via-trigger", action="store_true", help="fill through the rollup trigger, row batch by row batch (slow)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (prints its DSN)")
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.rows.split(",")], args.chunk, args.via_trigger, args.keep))
