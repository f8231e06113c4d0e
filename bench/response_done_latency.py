"""What durable recording adds to `response.done`: relay latency of `response.done` vs a delta.

`python bench/response_done_latency.py [--quick]` runs, in one process, a real voxgate
(uvicorn, the fast relay, the ledger writer on a real Postgres, live state on Redis), a
scripted upstream and a client. For every response the upstream sends `response.created`,
`DELTAS` audio deltas and a `response.done` with usage, stamping each send; the client
stamps each receipt on the same clock. A delta goes through voxgate untouched; the
`response.done` waits until its usage row has committed (docs/relay.md, "Billing"). The
figure is, per response, (receipt - send) of the `response.done` minus the same for the
last delta before it; each run reports the median over its responses, and the result is
the median of three runs. Postgres and Redis come from VOXGATE_BENCH_PG_ADMIN_DSN /
VOXGATE_BENCH_REDIS_URL (as `bench/run.py`), on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import websockets
from stores import setup_services, teardown_services
from websockets.asyncio.server import ServerConnection, serve

from gateway.app import create_app, drain
from gateway.server import start_server
from gateway.settings import (
    AdminSettings,
    DatabaseSettings,
    EnforcementSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)

DELTAS = 10
AUDIO_B64 = "AAAAAAEAAgADAP//" * 80
USAGE = {
    "total_tokens": 130,
    "input_tokens": 30,
    "output_tokens": 100,
    "input_token_details": {"text_tokens": 30, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 20, "audio_tokens": 80},
}


class ScriptedUpstream:
    """Answers each `response.create` with a response, stamping when each event was sent."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # event_id -> perf_counter at send

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "event_id": "ev_created", "session": {"id": "sess_b"}}))
        n = 0
        async for message in ws:
            if json.loads(message).get("type") != "response.create":
                continue
            n += 1
            rid = f"resp_{secrets.token_hex(6)}_{n}"
            await self._send(
                ws,
                {
                    "type": "response.created",
                    "event_id": f"{rid}_created",
                    "response": {"id": rid, "status": "in_progress"},
                },
            )
            for i in range(DELTAS):
                await self._send(
                    ws,
                    {
                        "type": "response.output_audio.delta",
                        "event_id": f"{rid}_d{i}",
                        "response_id": rid,
                        "item_id": "item_1",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": AUDIO_B64,
                    },
                )
            done = {"id": rid, "status": "completed", "output": [], "usage": USAGE}
            await self._send(ws, {"type": "response.done", "event_id": f"{rid}_done", "response": done})

    async def _send(self, ws: ServerConnection, event: dict[str, Any]) -> None:
        data = json.dumps(event)
        self.sent[event["event_id"]] = time.perf_counter()
        await ws.send(data)


async def one_run(url: str, api_key: str, upstream: ScriptedUpstream, responses: int) -> dict[str, float]:
    """One session of `responses` responses; medians of the relay latencies, in ms."""
    done_ms: list[float] = []
    delta_ms: list[float] = []
    async with websockets.connect(
        f"{url}?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {api_key}"}, compression=None
    ) as ws:
        json.loads(await ws.recv())  # session.created
        for _ in range(responses):
            await ws.send(json.dumps({"type": "response.create"}))
            while True:
                raw = await ws.recv()
                received = time.perf_counter()
                event = json.loads(raw)
                event_id = event.get("event_id", "")
                if event_id.endswith(f"_d{DELTAS - 1}"):
                    delta_ms.append((received - upstream.sent[event_id]) * 1000)
                elif event["type"] == "response.done":
                    done_ms.append((received - upstream.sent[event_id]) * 1000)
                    break
    added = [d - c for d, c in zip(done_ms, delta_ms, strict=True)]
    return {
        "delta_ms": statistics.median(delta_ms),
        "done_ms": statistics.median(done_ms),
        "added_ms": statistics.median(added),
    }


async def main_async(quick: bool) -> dict[str, Any]:
    responses = 20 if quick else 100
    with tempfile.TemporaryDirectory(prefix="voxgate-done-latency-") as tmp:
        services = await setup_services(Path(tmp))
        upstream = ScriptedUpstream()
        server = await serve(upstream.handler, "127.0.0.1", 0, compression=None)
        up_port = server.sockets[0].getsockname()[1]
        settings = Settings(
            server=ServerSettings(shutdown_grace_seconds=0.0),
            database=DatabaseSettings(url=services.dsn, pool_max=5),
            redis=RedisSettings(url=services.redis_url, key_prefix=services.redis_prefix),
            upstream=UpstreamSettings(url=f"http://127.0.0.1:{up_port}/v1", api_key="sk-bench"),
            admin=AdminSettings(default_tier=None),
            enforcement=EnforcementSettings(calls_scan_seconds=0.0),
        )
        app = create_app(settings)
        gateway = await start_server(
            app, ws_max_size=settings.server.max_message_bytes, before_shutdown=lambda: drain(app), realtime_relay=True
        )
        try:
            url = f"ws://127.0.0.1:{gateway.port}/v1/realtime"
            await one_run(url, services.api_key, upstream, 5)  # warm-up: pools, caches
            runs = [await one_run(url, services.api_key, upstream, responses) for _ in range(3)]
        finally:
            await gateway.stop()
            server.close()
            await server.wait_closed()
            await teardown_services(services)
    return {
        "responses_per_run": responses,
        "runs": runs,
        "delta_ms": statistics.median(r["delta_ms"] for r in runs),
        "done_ms": statistics.median(r["done_ms"] for r in runs),
        "added_ms": statistics.median(r["added_ms"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 responses per run instead of 100")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args.quick))
    for i, run in enumerate(result["runs"], 1):
        print(
            f"run {i}: delta {run['delta_ms']:.2f} ms, response.done {run['done_ms']:.2f} ms, "
            f"added {run['added_ms']:.2f} ms (medians of {result['responses_per_run']} responses)"
        )
    print(
        f"median of 3 runs: a delta crosses voxgate in {result['delta_ms']:.2f} ms, response.done in "
        f"{result['done_ms']:.2f} ms: durable recording adds {result['added_ms']:.2f} ms per response"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
