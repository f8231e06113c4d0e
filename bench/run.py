"""One command for the whole benchmark: `python bench/run.py [--quick]` (or `make bench`).

For every point (paced or flat-out sessions), every upstream hop (plain ws:// and TLS,
with a CA made for the run) and every target — direct (load generator -> fake upstream),
nginx (if installed), voxgate, and the plain `websockets` relay when nginx is missing — it
starts a fresh fake upstream and relay, drives the load generator and reads the relay's CPU
from /proc. Repeats are interleaved (run 1 of every target, then run 2, ...) and the report
shows the median. Then idle memory, admission and ledger ingestion.

Records the run as JSON (bench/results/<stamp>.json and latest.json) and renders it to
Markdown (latest.md, and with --write-docs the section of docs/benchmarks.md between its
markers); `--docs FILE.json` re-renders that section from a recorded run without measuring.
Loopback only; every load is bounded and stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import BENCH, ROOT, log, wait_quiet
from report import median_row, render, write_docs
from targets import HOPS, Bench, Target, nginx_binary

RESULTS = BENCH / "results"
SHAPES = "python-sdk,python-sdk-event-id,agents-sdk,js-sdk"


@dataclass
class Plan:
    paced: list[int]
    flatout_sessions: int
    seconds: float
    grace: float
    idle: int
    admission: int
    ledger: int


FULL = Plan(paced=[200], flatout_sessions=50, seconds=8.0, grace=3.0, idle=300, admission=400, ledger=5000)
QUICK = Plan(paced=[200], flatout_sessions=20, seconds=3.0, grace=2.0, idle=100, admission=100, ledger=1000)


def targets(args: argparse.Namespace, notes: list[str]) -> list[Target]:
    out = [Target("direct", "direct")]
    if args.no_nginx:
        notes.append("nginx skipped (--no-nginx); ratios are vs the plain websockets relay.")
    elif nginx_binary():
        out.append(Target("nginx", "nginx"))
    else:
        notes.append("nginx is not installed (`apt-get install -y nginx`): skipped; ratios are vs the plain relay.")
    if args.plain_relay or len(out) == 1:
        out.append(Target("plain websockets relay", "plain"))
    if not args.no_floor:  # what any Python relay pays: the part of voxgate's figure its own code cannot remove
        out.append(Target("python floor", "floor"))
    out.append(Target("voxgate", "voxgate"))
    if args.baseline:  # an A/B in one run: the same points, interleaved, for another tree
        out.append(Target("voxgate baseline", "voxgate", Path(args.baseline).resolve()))
    if args.targets:
        wanted = [w.strip() for w in args.targets.split(",") if w.strip()]
        out = [t for t in out if any(w in t.name for w in wanted)]
    return out


def stream_row(target: Target, hop: str, mode: str, sessions: int, r: dict[str, Any]) -> dict[str, Any]:
    received = r.get("received") or 0
    cpu, user = r.get("relay_cpu_seconds"), r.get("relay_user_seconds")
    per_1k = lambda s: 1000 * s / (received / 1000) if s is not None and received else None  # noqa: E731
    return {
        "target": target.name,
        "kind": target.kind,
        "hop": hop,
        "mode": mode,
        "sessions": sessions,
        "connected": r.get("connected") or 0,
        "rate": r.get("rate"),
        "target_rate": r.get("target_rate"),
        "p50_ms": r.get("p50_ms"),
        "p99_ms": r.get("p99_ms"),
        "delivered": r.get("delivered_fraction"),
        "cpu_ms_per_1k": per_1k(cpu),
        "cpu_user_ms_per_1k": per_1k(user),
        "relay_cpu": r.get("relay_cpu_fraction"),
        "errors": r.get("error_count", 0),
        "first_error": r.get("first_error"),
        "turn_deltas": r.get("turn_deltas", 0),
        "loadgen_cpu": r.get("loadgen_cpu_fraction"),
        "upstream_cpu": r.get("upstream_cpu_fraction"),
        "other_cpu": r.get("other_cpu_fraction"),
        "kept_up": r.get("kept_up"),
        "load_average": r.get("load_average"),
        "echoes_per_half_second": r.get("echoes_per_half_second"),
    }


def measure_point(
    args: argparse.Namespace, plan: Plan, bench: Bench, target: Target, hop: str, mode: str, sessions: int
) -> dict[str, Any] | None:
    quiet = wait_quiet(args.quiet_limit, args.quiet_wait)
    if quiet > args.quiet_limit:
        log(f"  machine busy with other work ({100 * quiet:.0f}% of a core); measuring anyway")
    log(f"{target.name} ({hop} upstream): {mode} {sessions} sessions x {plan.seconds:g}s")
    running = bench.start(target, hop)
    try:
        r = bench.loadgen(running, mode, sessions=sessions, seconds=plan.seconds, grace=plan.grace, concurrency=32)
    finally:
        bench.shutdown(running)
    row = stream_row(target, hop, mode, sessions, r)
    log(
        f"  -> {row['rate'] or 0:,.0f} frames/s p99 {row['p99_ms'] or 0:.2f} ms "
        f"cpu/1k {row['cpu_ms_per_1k'] or 0:.1f} ms errors {row['errors']}"
    )
    return row


def run_streams(args: argparse.Namespace, plan: Plan, bench: Bench, tlist: list[Target], notes: list[str]) -> list:
    rows: list[dict[str, Any]] = []
    points = [("paced", s) for s in plan.paced] + [("flatout", plan.flatout_sessions)] * (not args.no_flatout)
    for mode, sessions in points:
        for hop in args.hops:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tlist}
            for _ in range(args.repeat):
                for target in tlist:
                    if target.kind == "floor" and hop != "plain":  # see docs/benchmarks.md, "The Python floor"
                        continue
                    try:
                        row = measure_point(args, plan, bench, target, hop, mode, sessions)
                    except RuntimeError as exc:
                        notes.append(f"{target.name} {hop} {mode} {sessions}: {exc}")
                        continue
                    if row is not None:
                        runs[target.name].append(row)
            rows += [median_row(r) for r in runs.values() if r]
    return rows


def run_extras(args: argparse.Namespace, plan: Plan, bench: Bench, tlist: list[Target], data: dict) -> None:
    """Idle memory per relay; admission and ledger ingestion for voxgate, per hop."""
    from extras import admission_and_ledger, idle_memory

    for target in tlist:
        if target.kind != "direct":
            idle_memory(bench, target, plan.idle, data)
    for hop in args.hops:
        for target in tlist:
            if target.kind == "voxgate":
                admission_and_ledger(bench, target, hop, plan.admission, plan.ledger, data)


def machine() -> tuple[str, str]:
    """(a one-line description, the CPU model)."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    nginx = "not installed"
    if binary := nginx_binary():
        nginx = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    import ssl

    import uvloop
    import websockets

    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, uvloop {uvloop.__version__}, websockets {websockets.__version__}, "
        f"nginx {nginx}, {ssl.OPENSSL_VERSION}",
        cpu,
    )


def commit(source: Path) -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(source), *a], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="voxgate benchmark suite (loopback only, bounded)")
    p.add_argument("--quick", action="store_true", help="~2 minutes: short windows, one run per point")
    p.add_argument("--repeat", type=int, help="runs per point, the table shows the median (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="override the measurement window per point")
    p.add_argument("--paced", help="override the paced session counts, e.g. 50,200,500")
    p.add_argument("--hops", default=",".join(HOPS), help="upstream hops to measure: plain,tls")
    p.add_argument("--targets", help="only these targets (substrings of their names), e.g. nginx,voxgate")
    p.add_argument("--no-nginx", action="store_true", help="skip nginx even if installed")
    p.add_argument("--plain-relay", action="store_true", help="also measure the plain websockets relay")
    p.add_argument("--no-floor", action="store_true", help="skip the Python byte pipe on uvloop (bench/floor_relay.py)")
    p.add_argument("--no-flatout", action="store_true", help="paced points only")
    p.add_argument("--no-extras", action="store_true", help="round trips only: no idle, admission, ledger")
    p.add_argument("--profile", action="store_true", help="also sample voxgate with py-spy (200 paced, per hop)")
    p.add_argument("--shapes", default=SHAPES, help="append shapes spread over the sessions (SDK spellings)")
    p.add_argument("--turn-seconds", type=float, default=5.0, help="fake upstream: seconds between VAD turns (0: none)")
    p.add_argument("--quiet-limit", type=float, default=0.25, help="wait until other work uses < this many cores")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="... at most this long per point (90 s per run)")
    p.add_argument("--source", help="run voxgate from this source tree (e.g. a `git archive` of a commit)")
    p.add_argument("--baseline", help="also run voxgate from this source tree as a second target (an A/B)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) after the run")
    p.add_argument("--write-docs", action="store_true", help="also render the run into docs/benchmarks.md")
    p.add_argument("--docs", metavar="JSON", help="only render this recorded run into docs/benchmarks.md")
    args = p.parse_args(argv)
    args.hops = [h for h in args.hops.split(",") if h in HOPS]
    args.repeat = args.repeat or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.docs:
        data = json.loads(Path(args.docs).read_text())
        data["meta"]["json"] = args.docs
        write_docs(data)
        log(f"rendered {args.docs} into docs/benchmarks.md")
        return 0
    plan = QUICK if args.quick else FULL
    plan.seconds = args.seconds or plan.seconds
    if args.paced:
        plan.paced = [int(x) for x in args.paced.split(",") if x]
    source = Path(args.source).resolve() if args.source else ROOT
    sys.path.insert(0, str(source))
    with contextlib.suppress(ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from extras import profile_voxgate
    from stores import setup_services, teardown_services
    from tls import make_ca_and_server_cert

    now = dt.datetime.now(dt.UTC)
    description, cpu = machine()
    data: dict[str, Any] = {"rows": [], "idle": [], "admission": [], "ledger": []}
    notes: list[str] = []
    data["meta"] = {
        "started": now.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(source),
        "command": " ".join(["python bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": description,
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "plan": asdict(plan),
        "hops": args.hops,
        "repeat": args.repeat,
        "shapes": args.shapes,
        "turn_seconds": args.turn_seconds,
        "notes": notes,
    }
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, True)
        services = asyncio.run(setup_services(tmp))
        try:
            bench = Bench(args, tmp, services, make_ca_and_server_cert(tmp / "tls"))
            tlist = targets(args, notes)
            data["targets"] = [t.name for t in tlist]
            data["rows"] = run_streams(args, plan, bench, tlist, notes)
            if not args.no_extras:
                run_extras(args, plan, bench, tlist, data)
            if args.profile:
                for hop in args.hops:
                    profile_voxgate(bench, Target("voxgate", "voxgate"), hop, 200, plan.seconds, data)
        finally:
            asyncio.run(teardown_services(services))
    data["meta"]["seconds"] = time.monotonic() - t_start
    data["meta"]["load_after"] = os.getloadavg()[0]
    stamp = now.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    data["meta"]["json"] = f"bench/results/{stamp}.json"
    for name in (f"{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(data, indent=1) + "\n")
    report = render(data)
    for name in (f"{stamp}.md", "latest.md"):
        (RESULTS / name).write_text(report)
    if args.write_docs:
        write_docs(data)
    print(report)
    log(f"wrote bench/results/{stamp}.json and .md (latest.*){' and docs/benchmarks.md' if args.write_docs else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
