"""The runner's measurements beside the round trips: idle memory, admission, ledger, a profile."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from procs import log, stop
from stores import ledger_rows
from targets import CLIENT_SECRET_BODY, PY, Bench, Running, Target


def idle_memory(bench: Bench, target: Target, sessions: int, data: dict[str, Any]) -> None:
    log(f"{target.name}: {sessions} idle sessions")
    try:
        running = bench.start(target, "plain")
    except RuntimeError as exc:
        data["meta"]["notes"].append(f"idle {target.name}: could not start: {exc}")
        return
    try:
        r = bench.loadgen(running, "idle", sessions=sessions, concurrency=32)
        kb = (r["rss_ready"] - r["rss_base"]) / max(1, r["connected"]) / 1024 if r.get("rss_ready") else None
        data["idle"].append(
            {
                "target": target.name,
                "sessions": r["connected"],
                "kb_per_session": kb,
                "rss_base_mb": r["rss_base"] / 2**20,
                "errors": r["error_count"],
            }
        )
    except RuntimeError as exc:
        data["meta"]["notes"].append(f"idle {target.name}: {exc}")
    finally:
        bench.shutdown(running)


def admission_and_ledger(bench: Bench, target: Target, hop: str, count: int, ledger: int, data: dict) -> None:
    log(f"{target.name} ({hop} upstream): admission ({count} connects vs GET /healthz) and ledger ({ledger})")
    try:
        running = bench.start(target, hop)
    except RuntimeError as exc:
        data["meta"]["notes"].append(f"admission/ledger {hop}: could not start: {exc}")
        return
    base = f"ws://127.0.0.1:{running.ws_port}"
    try:
        checks = (
            ("GET /healthz (new connection each)", {"mode": "http", "url": f"{base}/healthz"}),
            ("WebSocket connect to session.created", {"mode": "connect"}),
            (
                "POST /v1/realtime/client_secrets (new connection each)",
                {"mode": "http", "url": f"{base}/v1/realtime/client_secrets", "post_json": CLIENT_SECRET_BODY},
            ),
        )
        for name, opts in checks:
            r = bench.loadgen(running, count=count, concurrency=16, seconds=60, **opts)
            cpu = r.get("relay_cpu_seconds")
            data["admission"].append(
                {
                    "hop": hop,
                    "what": name,
                    "per_second": r["per_second"],
                    "p50_ms": r["p50_ms"],
                    "p99_ms": r["p99_ms"],
                    "errors": r["error_count"],
                    "first_error": r.get("first_error"),
                    "relay_cpu_ms_each": 1000 * cpu / max(1, r["ok"]) if cpu is not None else None,
                }
            )
        data["ledger"].append({"hop": hop, **_ledger(bench, running, ledger)})
    except RuntimeError as exc:
        data["meta"]["notes"].append(f"admission/ledger {hop}: {exc}")
    finally:
        bench.shutdown(running)


def _ledger(bench: Bench, running: Running, count: int) -> dict[str, Any]:
    """20 sessions `response.create` -> `response.done`, and the rows' arrival in Postgres."""
    before = asyncio.run(ledger_rows(bench.services.dsn))
    r = bench.loadgen(running, "ledger", sessions=20, count=count, concurrency=20, seconds=60)
    t0 = r["go_monotonic"] or time.monotonic()
    want, rows_now = before + r["responses"], before
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows_now = asyncio.run(ledger_rows(bench.services.dsn))
        if rows_now >= want:
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    written = rows_now - before
    return {
        "responses": r["responses"],
        "rows": written,
        "relay_per_second": r["per_second"],
        "rows_per_second": written / elapsed if elapsed else None,
        "errors": r["error_count"],
        "first_error": r.get("first_error"),
    }


def profile_voxgate(bench: Bench, target: Target, hop: str, sessions: int, seconds: float, data: dict) -> None:
    """One extra paced point with py-spy sampling voxgate (not in the main table)."""
    spy = Path(PY).parent / "py-spy"
    spy_bin = str(spy) if spy.exists() else shutil.which("py-spy")
    if spy_bin is None:
        data["meta"]["notes"].append("--profile: py-spy is not installed (the `bench` extra); no profile taken.")
        return
    log(f"voxgate ({hop} upstream): profiling {sessions} paced sessions with py-spy")
    out = bench.tmp / f"profile-{hop}.txt"
    spies: list[subprocess.Popen[Any]] = []
    running = bench.start(target, hop)

    def attach() -> None:
        assert running.relay is not None
        cmd = [spy_bin, "record", "--pid", str(running.relay.pid), "--duration", str(int(seconds))]
        cmd += ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        bench.loadgen(running, "paced", sessions=sessions, seconds=seconds, grace=2, on_ready=attach)
        for p in spies:
            p.wait(30)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        data["meta"]["notes"].append(f"profile {hop}: {exc}")
    finally:
        for p in spies:
            stop(p)
        bench.shutdown(running)
    if out.exists():
        data.setdefault("profiles", []).append({"hop": hop, "sessions": sessions, **summarize_profile(out.read_text())})
        shutil.copy(out, Path(__file__).resolve().parent / "results" / f"profile-{hop}.folded")


# Frames every sample passes through (the loop and the CLI): left out of the inclusive ranking.
_LOOP_FILES = ("(runners.py)", "(base_events.py)", "(events.py)", "(__init__.py)", "(run.py)", "(<string>)")


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
