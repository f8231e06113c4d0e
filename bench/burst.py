"""The long burst: `python bench/burst.py [--sessions 1000] [--seconds 30] [--faults]` (docs/benchmarks.md).

One `voxgate serve` process in front of the emulator, on loopback, with real Postgres and Redis
(VOXGATE_BENCH_PG_ADMIN_DSN / VOXGATE_BENCH_REDIS_URL, defaults 127.0.0.1:5432 and :6379). A
quarter of the sessions belong to a tenant with a daily budget the burst crosses; the rest to an
unlimited tenant taking a turn about every `--pause` seconds for `--seconds`; one session uses the
`openai` SDK. All open within one second. `--faults` routes the gateway's Postgres and Redis through
loopback proxies and, once every session is open, cuts each for `--cut` seconds (Postgres at 1/3 of
`--seconds`, Redis at 2/3).

Prints the figures (sessions, responses, ledger rows, lost, overshoot, leaked leases, latency) as
JSON on stdout. The same driver as tests/test_burst.py (tests/support/burst.py), with the same
independent prices. It creates its own database (dropped afterwards) and Redis prefix (deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from gateway.storage.migrations import apply_migrations  # noqa: E402
from tests.support.burst import BurstShape, run_burst  # noqa: E402
from tests.support.gateway_process import gateway_env, gateway_process  # noqa: E402
from tests.support.harness import UPSTREAM_KEY, make_tenant, start_emulator  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402

PG_ADMIN = os.environ.get("VOXGATE_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("VOXGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def log(msg: str) -> None:
    print(f"[burst {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def with_netloc(url: str, host: str, port: int, path: str | None = None) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}{host}:{port}", parts.path if path is None else path, parts.query, ""))


async def main(args: argparse.Namespace) -> dict[str, object]:
    budget_sessions = max(1, args.sessions // 4)
    free_sessions = max(1, args.sessions - budget_sessions - 1)
    turns = max(2, round(args.seconds / args.pause)) if args.seconds else 2
    shape = BurstShape(
        budget_sessions=budget_sessions,
        free_sessions=free_sessions,
        free_turns=turns,
        free_pause_s=args.pause if args.seconds else 0.0,
        daily_usd=f"{budget_sessions * 0.0075:.6f}",
    )
    name = f"voxgate_burst_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_netloc(PG_ADMIN, urlsplit(PG_ADMIN).hostname or "127.0.0.1", urlsplit(PG_ADMIN).port or 5432, f"/{name}")
    prefix = f"vgburst:{secrets.token_hex(4)}:"
    redis = aioredis.from_url(REDIS_URL)
    emulator = await start_emulator(tokens_limit=10**12, requests_limit=10**9)
    proxies: list[TcpProxy] = []
    try:
        await apply_migrations(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        gw_dsn, gw_redis = dsn, REDIS_URL
        if args.faults:
            pg_parts, rd_parts = urlsplit(dsn), urlsplit(REDIS_URL)
            pg = await TcpProxy(pg_parts.hostname or "127.0.0.1", pg_parts.port or 5432).start()
            rd = await TcpProxy(rd_parts.hostname or "127.0.0.1", rd_parts.port or 6379).start()
            proxies = [pg, rd]
            gw_dsn = with_netloc(dsn, "127.0.0.1", pg.port)
            gw_redis = with_netloc(REDIS_URL, "127.0.0.1", rd.port)
        env = gateway_env(
            gw_dsn, gw_redis, emulator.base_url, prefix, UPSTREAM_KEY, VOXGATE_REDIS_POOL_SIZE=str(args.redis_pool)
        )
        tenants = (await make_tenant(pool, "burst-budget"), await make_tenant(pool, "burst-free"))

        async def disturb(opened: asyncio.Event) -> None:
            await opened.wait()  # cut live traffic, not the opening (that would only test 503s)
            span = max(args.seconds, 3 * args.cut)
            for n, proxy in enumerate(proxies):
                await asyncio.sleep(span / 3 if n == 0 else max(0.0, span / 3 - args.cut))
                log(f"cutting {'Postgres' if n == 0 else 'Redis'} for {args.cut} s")
                proxy.cut()
                await asyncio.sleep(args.cut)
                proxy.restore()

        with tempfile.TemporaryDirectory(prefix="voxgate-burst-") as logs:
            async with gateway_process(env, Path(logs)) as gateway:
                log(f"burst: {shape.sessions} sessions ({budget_sessions} budgeted), faults: {args.faults}")
                figures = await run_burst(
                    shape, gateway, emulator, pool, redis, prefix, tenants, disturb if args.faults else None
                )
        await pool.close()
        return figures.summary()
    finally:
        for proxy in proxies:
            await proxy.stop()
        await emulator.stop()
        async for key in redis.scan_iter(match=f"{prefix}*"):
            await redis.delete(key)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300, help="sessions opened within one second (default 300)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="keep the unlimited tenant's sessions talking this long (default: 2 turns each)",
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a session's turns with --seconds")
    parser.add_argument("--faults", action="store_true", help="cut Postgres, then Redis, mid-burst")
    parser.add_argument("--cut", type=float, default=2.0, help="length of each cut with --faults (seconds)")
    parser.add_argument("--redis-pool", type=int, default=8, help="VOXGATE_REDIS_POOL_SIZE (default 8)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse())), indent=2))
