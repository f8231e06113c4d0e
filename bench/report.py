"""The benchmark's report: Markdown from a recorded run (`bench/results/*.json`), never by hand.

`render(data)` is the whole report (bench/results/latest.md); `write_docs(data)` puts the
same text between `<!-- bench:begin -->` and `<!-- bench:end -->` in docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from procs import ROOT

DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CPU_GOAL, P99_GOAL_MS, RATE_GOAL, GOAL_SESSIONS = 1.5, 5.0, 0.9, 200


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def baseline_name(targets: list[str]) -> str:
    return "nginx" if "nginx" in targets else "plain websockets relay"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def render(data: dict[str, Any], heading: str = "#") -> str:
    meta = data["meta"]
    h2 = heading + "#"
    base = baseline_name(data["targets"])
    rows = data["rows"]
    by_key = {(r["hop"], r["target"], r["mode"], r["sessions"]): r for r in rows}
    loads = [la for r in rows for la in (r.get("load_average") or [])]
    runs = f"median of {meta['repeat']} runs" if meta["repeat"] > 1 else "one run"
    out = [
        f"{heading} voxgate benchmark — {meta['started']}",
        "",
        f"- Commit `{meta['commit']}`; command `{meta['command']}` ({meta['seconds']:.0f} s in all).",
        f"- Machine: {meta['machine']}. Load generator, fake upstream and relay share these cores.",
        f"- Load average (1 min) {fmt(meta['load_before'], 2)} before the run, {fmt(meta['load_after'], 2)} after, "
        f"{fmt(min(loads) if loads else None, 2)} to {fmt(max(loads) if loads else None, 2)} at the points' "
        "starts and ends.",
        f"- Plan: paced {meta['plan']['paced']} sessions and flat-out {meta['plan']['flatout_sessions']}, "
        f"{meta['plan']['seconds']:g} s windows, upstream hop {' and '.join(meta['hops'])}, **"
        f"{runs}** per point (targets interleaved run by run). Append shapes: {meta['shapes']}; "
        f"a VAD turn every {meta['turn_seconds']:g} s per session. Ratios are vs **{base}** in the same run.",
        "",
        f"{h2} Round trips (append → audio delta)",
        "",
        "| upstream | target | mode | sessions | frames/s (target) | p50 ms | p99 ms | p99 added over direct "
        "| relay CPU ms / 1k RT (user) | CPU x base | rate x base | relay CPU | turn deltas | errors "
        "| other CPU | kept up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = by_key.get((r["hop"], base, r["mode"], r["sessions"]))
        d = by_key.get((r["hop"], "direct", r["mode"], r["sessions"]))
        added = r["p99_ms"] - d["p99_ms"] if d and r["p99_ms"] is not None and d["p99_ms"] is not None else None
        target_rate = f" ({fmt(r['target_rate'], 0)})" if r["target_rate"] else ""
        user = f" ({fmt(r['cpu_user_ms_per_1k'], 1)})" if r.get("cpu_user_ms_per_1k") is not None else ""
        out.append(
            f"| {r['hop']} | {r['target']} | {r['mode']} | {r['sessions']} | {fmt(r['rate'], 0)}{target_rate} | "
            f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(added if r['target'] != 'direct' else None, 2)} | "
            f"{fmt(r['cpu_ms_per_1k'], 1)}{user} | {fmt(_ratio(r['cpu_ms_per_1k'], b and b['cpu_ms_per_1k']), 2)} | "
            f"{fmt(_ratio(r['rate'], b and b['rate']), 2)} | {pct(r['relay_cpu'])} | {r.get('turn_deltas', 0)} | "
            f"{r['errors']} | {pct(r.get('other_cpu'))} | {fmt(r['kept_up']) if r['mode'] == 'paced' else 'n/a'} |"
        )
    out += [
        "",
        "CPU % columns are of one core over the measurement window (the machine has "
        f"{meta['cores']}). *Other CPU* is the machine's busy time not charged to the load generator, fake "
        "upstream or relay (kernel network work and anything else running): a high value means a disturbed "
        "point. *Turn deltas* are the audio deltas of the fake upstream's VAD turns (passed, not timed).",
        "",
    ]
    out += goal_lines(rows, base, h2)
    out += _extras(data, h2)
    if meta.get("notes"):
        out += ["", f"{h2} Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(out) + "\n"


def goal_lines(rows: list[dict[str, Any]], base: str, h2: str = "##") -> list[str]:
    """Issue 12's goal, checked against this run's numbers, per upstream hop."""
    out = [f"{h2} Goal check", ""]
    by_key = {(r["hop"], r["target"], r["mode"], r["sessions"]): r for r in rows}
    for hop in sorted({r["hop"] for r in rows}):
        v = by_key.get((hop, "voxgate", "paced", GOAL_SESSIONS))
        b = by_key.get((hop, base, "paced", GOAL_SESSIONS))
        d = by_key.get((hop, "direct", "paced", GOAL_SESSIONS))
        if v and b:
            ratio = _ratio(v["cpu_ms_per_1k"], b["cpu_ms_per_1k"])
            ok = ratio is not None and ratio <= CPU_GOAL
            out.append(
                f"- {hop} upstream, {GOAL_SESSIONS} paced sessions: CPU per round trip {fmt(ratio, 2)}x {base} "
                f"(goal ≤ {CPU_GOAL}x): {'met' if ok else '**not met**'}"
            )
        f = by_key.get((hop, "python floor", "paced", GOAL_SESSIONS))
        if v and b and f:
            out.append(
                f"  - of which the Python floor (a byte pipe on uvloop: two reads and two writes per round trip) is "
                f"{fmt(_ratio(f['cpu_ms_per_1k'], b['cpu_ms_per_1k']), 2)}x {base}; voxgate's own work adds "
                f"{fmt(v['cpu_ms_per_1k'] - f['cpu_ms_per_1k'], 1)} ms per 1k round trips (framing, policy, VAD turns' "
                "metering, live state and ledger)"
            )
        if v and d and v["p99_ms"] is not None and d["p99_ms"] is not None:
            added = v["p99_ms"] - d["p99_ms"]
            ok = bool(v["kept_up"]) and added < P99_GOAL_MS
            out.append(
                f"- {hop} upstream, {GOAL_SESSIONS} paced sessions: p99 added over direct {fmt(added, 2)} ms, "
                f"kept up {fmt(v['kept_up'])} (goal < {P99_GOAL_MS:g} ms): {'met' if ok else '**not met**'}"
            )
        fv = next((r for r in rows if r["hop"] == hop and r["target"] == "voxgate" and r["mode"] == "flatout"), None)
        fb = next((r for r in rows if r["hop"] == hop and r["target"] == base and r["mode"] == "flatout"), None)
        if fv and fb:
            ratio = _ratio(fv["rate"], fb["rate"])
            ok = ratio is not None and ratio >= RATE_GOAL
            out.append(
                f"- {hop} upstream, flat out: frame rate {fmt(ratio, 2)}x {base} (goal ≥ {RATE_GOAL}x): "
                f"{'met' if ok else '**not met**'}"
            )
            ff = next(
                (r for r in rows if r["hop"] == hop and r["target"] == "python floor" and r["mode"] == "flatout"), None
            )
            if ff:
                out.append(f"  - the Python floor's frame rate: {fmt(_ratio(ff['rate'], fb['rate']), 2)}x {base}")
    return out


def _extras(data: dict[str, Any], h2: str) -> list[str]:
    out: list[str] = []
    if data.get("idle"):
        out += [
            "",
            f"{h2} Memory per idle session",
            "",
            "| target | idle sessions | RSS / session | relay RSS before |",
        ]
        out.append("|---|---|---|---|")
        for r in data["idle"]:
            out.append(
                f"| {r['target']} | {r['sessions']} | {fmt(r['kb_per_session'], 1)} KB | "
                f"{fmt(r['rss_base_mb'], 1)} MB |"
            )
    if data.get("admission"):
        out += ["", f"{h2} Admission (16 at a time; each a new TCP connection)", ""]
        out += [
            "| upstream | what | per second | p50 ms | p99 ms | relay CPU ms each | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["admission"]:
            out.append(
                f"| {r['hop']} | {r['what']} | {fmt(r['per_second'], 0)} | {fmt(r['p50_ms'], 2)} | "
                f"{fmt(r['p99_ms'], 2)} | {fmt(r['relay_cpu_ms_each'], 2)} | {r['errors']} |"
            )
    if data.get("ledger"):
        out += ["", f"{h2} Ledger ingestion (response.create → response.done → governor → usage_ledger)", ""]
        out += ["| upstream | responses | rows written | responses/s through relay | rows/s into Postgres | errors |"]
        out.append("|---|---|---|---|---|---|")
        for r in data["ledger"]:
            out.append(
                f"| {r['hop']} | {r['responses']} | {r['rows']} | {fmt(r['relay_per_second'], 0)} | "
                f"{fmt(r['rows_per_second'], 0)} | {r['errors']} |"
            )
    for prof in data.get("profiles", []):
        out += ["", f"{h2} Profile: voxgate, {prof['hop']} upstream, {prof['sessions']} paced sessions"]
        out += ["", f"py-spy, {prof['samples']} samples; not part of the table above (sampling perturbs it).", ""]
        out += ["| self % | function | | inclusive % | function |", "|---|---|---|---|---|"]
        for (fs, ss), (fi, si) in zip(prof["self"], prof["inclusive"], strict=False):
            out.append(f"| {100 * ss:.1f} | `{fs}` | | {100 * si:.1f} | `{fi}` |")
    return out


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field median over repeated runs; 'kept up' only if every run kept up; errors summed."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
        if isinstance(value, int | float) and not isinstance(value, bool) and values:
            row[key] = statistics.median(values)
    row["sessions"] = runs[0]["sessions"]  # the point's size, not a measurement
    row["errors"] = sum(r["errors"] for r in runs)
    kept = [r["kept_up"] for r in runs]
    row["kept_up"] = None if None in kept else all(kept)
    row["load_average"] = [la for r in runs for la in (r.get("load_average") or [])]
    row["runs"] = len(runs)
    return row


def write_docs(data: dict[str, Any], path: Path = DOCS) -> None:
    """Replace what lies between the markers in docs/benchmarks.md with this run's report."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    source = data["meta"].get("json", "bench/results/latest.json")
    body = f"\n<!-- generated by `python bench/run.py --docs {source}`; do not edit by hand -->\n\n"
    path.write_text(head + BEGIN + body + render(data, heading="###") + "\n" + END + tail)
