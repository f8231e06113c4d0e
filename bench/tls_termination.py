"""What terminating client TLS in voxgate costs (VOXGATE_TLS_CERT_FILE/KEY_FILE), measured in one run.

Every point runs the same paced Realtime load (bench/loadgen.py, the SDKs' frame shapes)
through a relay to the bench's fake upstream (plain ws:// upstream hop, so only the client
side differs), and reads two figures:
- CPU per round trip: the relay's user + system CPU over the window, per echoed append;
- p99 added latency: the relay's p99 round trip minus the p99 of the load generator talking
  to the fake upstream directly, with the same client-side TLS setting.

Configurations: voxgate plain (ws://) and voxgate terminating TLS (wss://); the baseline is
nginx in front of the same fake upstream, plain and terminating TLS, when nginx is installed.
The certificate comes from a CA made for the run (bench/tls.py); the load generator trusts
only it. Each configuration is measured `--repeat` times (default 3) with the configurations
interleaved, and the medians are printed with ratios against the baseline of the same run.

    python bench/tls_termination.py --quick   # ~2 minutes
    python bench/tls_termination.py           # longer windows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from procs import BENCH, ROOT, free_port, log, start_listening, stop, wait_port, wait_quiet
from targets import BENCH_TIERS, MODEL, NGINX_CONF, PY, UPSTREAM_KEY, Bench, Running, Target, nginx_binary
from tls import TlsFiles

SHAPES = "python-sdk,python-sdk-event-id,agents-sdk,js-sdk"


@dataclass(frozen=True)
class Config:
    name: str
    relay: str  # direct | voxgate | nginx
    client_tls: bool


CONFIGS = (
    Config("direct ws", "direct", False),
    Config("direct wss", "direct", True),
    Config("voxgate ws", "voxgate", False),
    Config("voxgate wss", "voxgate", True),
    Config("nginx ws", "nginx", False),
    Config("nginx wss", "nginx", True),
)


def _https_ready(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2, context=context) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def _http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


class TerminationBench:
    """Starts the fake upstream and one relay per configuration; reuses `Bench.loadgen` to measure."""

    def __init__(self, args: argparse.Namespace, tmp: Path, services: Any, tls: TlsFiles) -> None:
        self.args, self.tmp, self.services, self.tls = args, tmp, services, tls
        self.bench = Bench(args, tmp, services, tls)  # its load generator runner and CPU snapshots
        self.logs = self.bench.logs
        self.tiers = tmp / "tls-bench-tiers.yaml"
        self.tiers.write_text(BENCH_TIERS)

    def start(self, config: Config) -> Running:
        cmd = [PY, str(BENCH / "fake_upstream.py"), "--port", "0", "--turn-seconds", str(self.args.turn_seconds)]
        if config.relay == "direct" and config.client_tls:
            cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        upstream, up_port = start_listening(cmd, self.logs / "fake_upstream.log")
        try:
            if config.relay == "direct":
                relay, port = None, up_port
            elif config.relay == "voxgate":
                port = free_port()
                relay = self._voxgate(port, up_port, config.client_tls)
            else:
                port = free_port()
                relay = self._nginx(port, up_port, config.client_tls)
        except BaseException:
            stop(upstream)
            raise
        scheme = "wss" if config.client_tls else "ws"
        url = f"{scheme}://127.0.0.1:{port}/v1/realtime?model={MODEL}"
        return Running(Target(config.name, config.relay), "plain", url, port, relay, upstream)

    def _voxgate(self, port: int, up_port: int, client_tls: bool) -> subprocess.Popen[Any]:
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
            "VOXGATE_POLICY_FILE": str(self.tiers),
            "VOXGATE_DEFAULT_TIER": "bench",
        }
        if client_tls:
            env |= {"VOXGATE_TLS_CERT_FILE": str(self.tls.cert), "VOXGATE_TLS_KEY_FILE": str(self.tls.key)}
        cmd = [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())", "serve"]
        with open(self.logs / "voxgate.log", "a") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if _https_ready(port, self.tls.ca) if client_tls else _http_ready(port):
                return proc
            time.sleep(0.1)
        stop(proc)
        raise RuntimeError(f"voxgate did not become ready; see {self.logs / 'voxgate.log'}")

    def _nginx(self, port: int, up_port: int, client_tls: bool) -> subprocess.Popen[Any]:
        conf_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.tmp))
        conf = NGINX_CONF.format(dir=conf_dir, port=port, upstream=up_port, scheme="http", tls="")
        if client_tls:
            listen = f"listen 127.0.0.1:{port} backlog=4096;"
            assert listen in conf
            conf = conf.replace(
                listen,
                f"listen 127.0.0.1:{port} backlog=4096 ssl;\n"
                f"        ssl_certificate {self.tls.cert};\n"
                f"        ssl_certificate_key {self.tls.key};\n"
                "        ssl_protocols TLSv1.2 TLSv1.3;",
            )
        path = conf_dir / "nginx.conf"
        path.write_text(conf)
        cmd = [nginx_binary() or "nginx", "-p", str(conf_dir), "-c", str(path), "-e", str(conf_dir / "error.log")]
        with open(self.logs / "nginx.log", "a") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        if not wait_port(port, 10):
            stop(proc)
            raise RuntimeError(f"nginx did not start; see {conf_dir / 'error.log'}")
        return proc

    def measure(self, config: Config) -> dict[str, Any]:
        quiet = wait_quiet(self.args.quiet_limit, self.args.quiet_wait)
        if quiet > self.args.quiet_limit:
            log(f"  machine busy with other work ({100 * quiet:.0f}% of a core); measuring anyway")
        running = self.start(config)
        try:
            r = self.bench.loadgen(
                running,
                "paced",
                sessions=self.args.sessions,
                seconds=self.args.seconds,
                grace=self.args.grace,
                concurrency=32,
            )
        finally:
            self.bench.shutdown(running)
        received = r.get("received") or 0
        cpu = r.get("relay_cpu_seconds")
        row = {
            "config": config.name,
            "p99_ms": r.get("p99_ms"),
            "p50_ms": r.get("p50_ms"),
            "rate": r.get("rate"),
            "errors": r.get("error_count", 0),
            "cpu_us_per_round_trip": 1e6 * cpu / received if cpu is not None and received else None,
        }
        log(
            f"  {config.name}: p99 {row['p99_ms'] or 0:.2f} ms, "
            f"cpu/round trip {row['cpu_us_per_round_trip'] or 0:.1f} us, errors {row['errors']}"
        )
        return row


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> str:
    """a / b, or n/a when either is missing or not positive (an added p99 below noise)."""
    return f"{a / b:.2f}x" if a is not None and b is not None and a > 0 and b > 0 else "n/a"


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Medians per configuration, and the p99 each relay adds over direct with the same client TLS."""
    out: dict[str, dict[str, float | None]] = {}
    for name, rows in runs.items():
        out[name] = {
            "p99_ms": _median(rows, "p99_ms"),
            "cpu_us_per_round_trip": _median(rows, "cpu_us_per_round_trip"),
            "rate": _median(rows, "rate"),
            "errors": sum(r["errors"] for r in rows),
            "runs": len(rows),
        }
    for name, row in out.items():
        direct = out.get("direct wss" if name.endswith("wss") else "direct ws", {}).get("p99_ms")
        p99 = row["p99_ms"]
        row["added_p99_ms"] = None if p99 is None or direct is None or name.startswith("direct") else p99 - direct
    return out


def render(summary: dict[str, dict[str, float | None]], args: argparse.Namespace) -> str:
    lines = [
        f"TLS termination: paced {args.sessions} sessions x {args.seconds:g} s, medians of {args.repeat}",
        "",
        f"{'configuration':<14} {'cpu/round trip':>15} {'p99':>9} {'added p99':>10} {'frames/s':>9} {'errors':>6}",
    ]
    for name, row in summary.items():
        cpu, p99, added = row["cpu_us_per_round_trip"], row["p99_ms"], row["added_p99_ms"]
        lines.append(
            f"{name:<14} {'' if cpu is None else f'{cpu:.1f} us':>15} {'' if p99 is None else f'{p99:.2f} ms':>9} "
            f"{'' if added is None else f'{added:.2f} ms':>10} {row['rate'] or 0:>9,.0f} {row['errors'] or 0:>6.0f}"
        )
    vox_ws, vox_wss = summary.get("voxgate ws", {}), summary.get("voxgate wss", {})
    ngx_ws, ngx_wss = summary.get("nginx ws", {}), summary.get("nginx wss", {})
    cpu, added = "cpu_us_per_round_trip", "added_p99_ms"
    lines += [
        "",
        "ratios (same run):",
        f"  voxgate wss / voxgate ws: cpu {_ratio(vox_wss.get(cpu), vox_ws.get(cpu))}, "
        f"added p99 {_ratio(vox_wss.get(added), vox_ws.get(added))}",
    ]
    if ngx_wss:
        lines += [
            f"  nginx wss / nginx ws (baseline's own TLS cost): cpu {_ratio(ngx_wss.get(cpu), ngx_ws.get(cpu))}, "
            f"added p99 {_ratio(ngx_wss.get(added), ngx_ws.get(added))}",
            f"  voxgate wss / nginx wss: cpu {_ratio(vox_wss.get(cpu), ngx_wss.get(cpu))}, "
            f"added p99 {_ratio(vox_wss.get(added), ngx_wss.get(added))}",
        ]
    else:
        lines.append("  nginx is not installed: no baseline (apt-get install -y nginx)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="voxgate TLS termination benchmark (loopback only, bounded)")
    p.add_argument("--quick", action="store_true", help="~2 minutes: 100 sessions, 2.5 s windows")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration; the medians are printed")
    p.add_argument("--sessions", type=int, help="paced sessions (default 200; --quick 100)")
    p.add_argument("--seconds", type=float, help="measurement window (default 8; --quick 2.5)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    p.add_argument("--turn-seconds", type=float, default=5.0, help="fake upstream: seconds between VAD turns")
    p.add_argument("--quiet-limit", type=float, default=0.25, help="wait until other work uses < this many cores")
    p.add_argument("--quiet-wait", type=float, help="... at most this long per point (default 5; --quick 1)")
    p.add_argument("--json", help="also write the medians and every run here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    args.sessions = args.sessions or (100 if args.quick else 200)
    args.seconds = args.seconds or (2.5 if args.quick else 8.0)
    args.grace = 2.0 if args.quick else 3.0
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (1.0 if args.quick else 5.0)
    args.shapes = SHAPES
    args.source = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from stores import setup_services, teardown_services
    from tls import make_ca_and_server_cert

    configs = [c for c in CONFIGS if c.relay != "nginx" or (not args.no_nginx and nginx_binary())]
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="voxgate-tls-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, True)
        services = asyncio.run(setup_services(tmp))
        try:
            bench = TerminationBench(args, tmp, services, make_ca_and_server_cert(tmp / "tls"))
            for attempt in range(args.repeat):
                log(f"run {attempt + 1} of {args.repeat}")
                for config in configs:  # interleaved, so drift in the machine's load hits all alike
                    try:
                        runs[config.name].append(bench.measure(config))
                    except RuntimeError as exc:
                        log(f"  {config.name}: {exc}")
        finally:
            asyncio.run(teardown_services(services))
    summary = summarize(runs)
    print(render(summary, args))
    log(f"took {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
