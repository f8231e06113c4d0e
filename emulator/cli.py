"""`voxgate emulator`: serve the Realtime emulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from emulator.config import EmulatorConfig
from emulator.emulator import RealtimeEmulator

LIVE_USAGE_ENV = "VOXGATE_EMULATOR_LIVE_USAGE_INTERVAL_S"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `emulator` command to the `voxgate` command line."""
    parser = subparsers.add_parser(
        "emulator",
        help="run a local emulator of the OpenAI Realtime, GPT-Live and translation APIs",
        description=(
            "Serve a deterministic emulator of the OpenAI Realtime API (GA) at ws://HOST:PORT/v1/realtime, "
            "GPT-Live at /v1/live/sessions and Realtime translation at /v1/realtime/translations."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default: 8765)")
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=3600.0,
        help="close sessions after this long with error session_expired (default: 3600)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each server event (default: 0)")
    parser.add_argument("--pace-audio", action="store_true", help="stream assistant audio at real-time speed")
    parser.add_argument(
        "--live-usage-interval",
        type=float,
        default=float(os.environ.get(LIVE_USAGE_ENV, "15")),
        help=f"seconds between GPT-Live session.usage.updated events (default: ${LIVE_USAGE_ENV} or 15)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = EmulatorConfig(
        api_key=args.api_key,
        max_session_seconds=args.max_session_seconds,
        event_latency_ms=args.latency_ms,
        pace_audio=args.pace_audio,
        live_usage_interval_s=args.live_usage_interval,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, args.host, args.port))
    return 0


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    emulator = RealtimeEmulator(config)
    await emulator.start(host, port)
    print(f"Realtime emulator listening on {emulator.ws_url} (base URL {emulator.base_url})", flush=True)
    print(f"GPT-Live at {emulator.base_url}/live/sessions, translation at {emulator.ws_url}/translations", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.stop()
