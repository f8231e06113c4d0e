"""`voxgate serve` as a process of its own, for tests that kill it, cut its dependencies or load it.

The gateway runs as in production (uvloop, its own core, signals handled by the CLI), so a test can
SIGKILL or SIGTERM it and its pools are the ones a deployment gets. Its log goes to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

MODEL = "gpt-realtime"
VOXGATE = Path(sys.executable).with_name("voxgate")  # the checkout's own, in the test venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    port: int
    instance_id: str
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model={MODEL}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def readyz(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            body: dict[str, Any] = (await http.get(f"http://127.0.0.1:{self.port}/readyz")).json()
            return body

    async def idle(self, seconds: float = 30.0) -> None:
        """Wait until the gateway carries no session and its ledger queue is empty."""
        async with asyncio.timeout(seconds):
            while True:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    body = await self.readyz()
                    if body.get("live_sessions") == 0 and body.get("ledger_pending") == 0:
                        return
                await asyncio.sleep(0.1)

    def log_lines(self, needle: str) -> int:
        with contextlib.suppress(OSError):
            return sum(needle in line for line in self.log_path.read_text(errors="replace").splitlines())
        return 0

    async def signal_and_wait(self, sig: int, seconds: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        async with asyncio.timeout(seconds):
            return await self.proc.wait()

    async def stop_cleanly(self, seconds: float = 15.0) -> None:
        """SIGTERM, then assert a clean exit within `seconds`."""
        code = await self.signal_and_wait(signal.SIGTERM, seconds)
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete: killed by it, or 0.
        assert code in (0, -signal.SIGTERM), self.log_path.read_text(errors="replace")


def gateway_env(
    pg_dsn: str, redis_url: str, upstream_url: str, prefix: str, upstream_key: str, **overrides: str
) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")},
        "VOXGATE_DATABASE_URL": pg_dsn,
        "VOXGATE_REDIS_URL": redis_url,
        "VOXGATE_REDIS_PREFIX": prefix,
        "VOXGATE_UPSTREAM_URL": upstream_url,
        "VOXGATE_OPENAI_API_KEY": upstream_key,
        "VOXGATE_SHUTDOWN_GRACE_SECONDS": "0",
        "VOXGATE_LOG_LEVEL": "WARNING",
        "VOXGATE_DEFAULT_TIER": "",
        "VOXGATE_CALLS_SCAN_SECONDS": "0",
    }
    env.update(overrides)
    return env


async def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove what a gateway left in Redis under its `VOXGATE_REDIS_PREFIX`."""
    client = aioredis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


@asynccontextmanager
async def gateway_process(
    env: dict[str, str],
    log_dir: Path,
    instance_id: str = "burst-a",
    port: int | None = None,
    *,
    voxgate: Path = VOXGATE,
    args: Sequence[str] = (),
    cwd: Path | None = None,
    ready_seconds: float = 30.0,
) -> AsyncIterator[GatewayProcess]:
    """`voxgate serve *args` (the `voxgate` executable, run in `cwd`) with `env`, ready (GET /readyz 200
    within `ready_seconds`) on a free port; SIGTERMed on exit if still running, killed if it will not stop."""
    port = port or free_port()
    log_path = log_dir / f"{instance_id}-{port}-{time.monotonic_ns()}.log"
    env = {**env, "VOXGATE_PORT": str(port), "VOXGATE_INSTANCE_ID": instance_id}
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(voxgate), "serve", *args, cwd=cwd, env=env, stdout=log, stderr=log
        )
    gateway = GatewayProcess(proc, port, instance_id, log_path)
    try:
        async with asyncio.timeout(ready_seconds), httpx.AsyncClient() as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"voxgate serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield gateway
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
