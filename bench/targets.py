"""What the benchmark measures: the relays under test, started fresh for every point.

A target is direct (load generator -> fake upstream), nginx, a plain `websockets` relay,
or voxgate. Each point also has an upstream hop: `plain` (ws://) or `tls` (wss://, a
certificate from the run's own CA, as toward OpenAI). `Bench.loadgen` runs the load
generator and reads the relay's CPU (user and system) and RSS at its READY and DONE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import (
    BENCH,
    ROOT,
    cpu_seconds,
    cpu_times,
    free_port,
    http_status,
    proc_tree,
    read_line,
    rss_bytes,
    start_listening,
    stop,
    system_busy_seconds,
    wait_port,
)
from stores import Services
from tls import TlsFiles

PY = sys.executable
MODEL = "gpt-realtime"
UPSTREAM_KEY = "sk-bench-upstream"
HOPS = ("plain", "tls")

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
            proxy_pass {scheme}://fake;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_buffering off;
{tls}
        }}
    }}
}}
"""

NGINX_TLS = """\
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"""


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # direct | nginx | plain | floor | voxgate
    source: Path | None = None  # voxgate: run it from this tree instead of the bench's


@dataclass
class Running:
    target: Target
    hop: str
    url: str
    ws_port: int
    relay: subprocess.Popen[Any] | None
    upstream: subprocess.Popen[Any]

    def relay_pids(self) -> list[int]:
        return proc_tree(self.relay.pid) if self.relay is not None else []


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


class Bench:
    def __init__(self, args: Any, tmp: Path, services: Services, tls: TlsFiles) -> None:
        self.args = args
        self.tmp = tmp
        self.services = services
        self.tls = tls
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.tiers_file = tmp / "bench-tiers.yaml"
        self.tiers_file.write_text(BENCH_TIERS)
        self.source = Path(args.source).resolve() if args.source else ROOT

    def start(self, target: Target, hop: str) -> Running:
        cmd = [PY, str(BENCH / "fake_upstream.py"), "--port", "0", "--turn-seconds", str(self.args.turn_seconds)]
        if hop == "tls":
            cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        upstream, up_port = start_listening(cmd, self.logs / "fake_upstream.log")
        try:
            relay, port = self._start_relay(target, hop, up_port)
        except BaseException:
            stop(upstream)
            raise
        scheme = "wss" if hop == "tls" and target.kind == "direct" else "ws"
        url = f"{scheme}://127.0.0.1:{port}/v1/realtime?model={MODEL}"
        return Running(target, hop, url, port, relay, upstream)

    def _start_relay(self, target: Target, hop: str, up_port: int) -> tuple[subprocess.Popen[Any] | None, int]:
        secure = hop == "tls"
        if target.kind == "direct":
            return None, up_port
        if target.kind == "plain":
            cmd = [PY, str(BENCH / "plain_relay.py"), "--port", "0"]
            cmd += ["--upstream", f"{'wss' if secure else 'ws'}://127.0.0.1:{up_port}", "--ca-file", str(self.tls.ca)]
            return start_listening(cmd, self.logs / "plain_relay.log")
        if target.kind == "floor":
            cmd = [PY, str(BENCH / "floor_relay.py"), "--port", "0", "--upstream-port", str(up_port)]
            cmd += ["--upstream-tls", "--ca-file", str(self.tls.ca)] if secure else []
            return start_listening(cmd, self.logs / "floor_relay.log")
        port = free_port()
        if target.kind == "nginx":
            return self._start_nginx(secure, port, up_port), port
        env = {
            **os.environ,
            "VOXGATE_DATABASE_URL": self.services.dsn,
            "VOXGATE_REDIS_URL": self.services.redis_url,
            "VOXGATE_REDIS_PREFIX": self.services.redis_prefix,
            "VOXGATE_OPENAI_API_KEY": UPSTREAM_KEY,
            "VOXGATE_UPSTREAM_URL": f"{'https' if secure else 'http'}://127.0.0.1:{up_port}/v1",
            "VOXGATE_HOST": "127.0.0.1",
            "VOXGATE_PORT": str(port),
            "VOXGATE_SHUTDOWN_GRACE_SECONDS": "1",
            "VOXGATE_LOG_LEVEL": "WARNING",
            "VOXGATE_POLICY_FILE": str(self.tiers_file),
            "VOXGATE_DEFAULT_TIER": "bench",
            "SSL_CERT_FILE": str(self.tls.ca),  # trust the run's CA (and only it) upstream
        }
        cmd = [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())", "serve"]
        with open(self.logs / "voxgate.log", "a") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=target.source or self.source
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if http_status(port, "/readyz") == 200:
                return proc, port
            time.sleep(0.1)
        stop(proc)
        lines = (self.logs / "voxgate.log").read_text(errors="replace").strip().splitlines()
        raise RuntimeError(f"voxgate did not become ready: {lines[-1] if lines else 'no output'}")

    def _start_nginx(self, secure: bool, port: int, up_port: int) -> subprocess.Popen[Any]:
        conf_dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.tmp))
        conf = conf_dir / "nginx.conf"
        tls = NGINX_TLS.format(ca=self.tls.ca) if secure else ""
        scheme = "https" if secure else "http"
        conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, upstream=up_port, scheme=scheme, tls=tls))
        cmd = [nginx_binary() or "nginx", "-p", str(conf_dir), "-c", str(conf), "-e", str(conf_dir / "error.log")]
        with open(self.logs / "nginx.log", "a") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        if not wait_port(port, 10):
            stop(proc)
            raise RuntimeError(f"nginx did not start; see {self.logs / 'nginx.log'}")
        return proc

    def shutdown(self, running: Running) -> None:
        stop(running.relay, signal.SIGTERM, 15)
        stop(running.upstream)

    def loadgen(
        self, running: Running, mode: str, *, url: str | None = None, on_ready: Any = None, **opts: Any
    ) -> dict[str, Any]:
        """Run the load generator; snapshot the relay's CPU and RSS at READY and DONE."""
        cmd = [PY, str(BENCH / "loadgen.py"), "--url", url or running.url, "--mode", mode]
        cmd += ["--api-key", self.services.api_key, "--shapes", self.args.shapes, "--ca-file", str(self.tls.ca)]
        for key, value in opts.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        relay_pids = running.relay_pids()
        up_pids = proc_tree(running.upstream.pid)
        rss_base = rss_bytes(relay_pids)
        deadline = time.monotonic() + float(opts.get("seconds", 10)) + float(opts.get("grace", 3)) + 150
        snap: dict[str, Any] = {}
        result: dict[str, Any] | None = None
        with open(self.logs / "loadgen.log", "a") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            while (line := read_line(proc, deadline)) is not None:
                if line.startswith("READY"):
                    snap["rss_ready"] = rss_bytes(relay_pids)
                    snap["cpu0"], snap["up0"] = cpu_times(relay_pids), cpu_seconds(up_pids)
                    snap["sys0"], snap["t0"], snap["load0"] = system_busy_seconds(), time.monotonic(), os.getloadavg()
                    if on_ready is not None:
                        on_ready()
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif line.startswith("DONE"):
                    snap["cpu1"], snap["up1"] = cpu_times(relay_pids), cpu_seconds(up_pids)
                    snap["sys1"], snap["t1"], snap["load1"] = system_busy_seconds(), time.monotonic(), os.getloadavg()
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
            user, system = (b - a for a, b in zip(snap["cpu0"], snap["cpu1"], strict=True))
            result["relay_cpu_seconds"] = user + system if relay_pids else None
            result["relay_user_seconds"] = user if relay_pids else None
            result["relay_cpu_fraction"] = (user + system) / wall if relay_pids else None
            result["upstream_cpu_fraction"] = (snap["up1"] - snap["up0"]) / wall
            ours = user + system + (snap["up1"] - snap["up0"]) + float(result.get("loadgen_cpu_seconds") or 0.0)
            result["other_cpu_fraction"] = max(0.0, (snap["sys1"] - snap["sys0"]) - ours) / wall
            result["load_average"] = [round(snap["load0"][0], 2), round(snap["load1"][0], 2)]
        result["go_monotonic"] = snap.get("t0")
        result["rss_base"] = rss_base
        result["rss_ready"] = snap.get("rss_ready")
        result["rss_done"] = snap.get("rss_done")
        return result
