"""The baseline relay: the `websockets` library on both sides, messages moved as they are.

Each client connection opens one upstream connection to the same path (bearer passed
through) and two tasks copy messages both ways. No inspection, no policy.

Run: python bench/plain_relay.py --port 0 --upstream ws://127.0.0.1:PORT  (prints LISTENING <port>);
`--upstream wss://127.0.0.1:PORT --ca-file ca.pem` for a TLS upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def pump(source, sink) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(ConnectionClosed):
        async for message in source:
            await sink.send(message)


def handler_for(upstream: str, tls: ssl.SSLContext | None):  # type: ignore[no-untyped-def]
    async def handler(client: ServerConnection) -> None:
        headers = {"Authorization": client.request.headers.get("Authorization", "")}  # type: ignore[union-attr]
        path = client.request.path  # type: ignore[union-attr]
        async with connect(upstream + path, additional_headers=headers, compression=None, max_size=None, ssl=tls) as up:
            tasks = [asyncio.create_task(pump(client, up)), asyncio.create_task(pump(up, client))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    return handler


async def main(host: str, port: int, upstream: str, ca_file: str | None) -> None:
    tls = ssl.create_default_context(cafile=ca_file) if upstream.startswith("wss:") else None
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler_for(upstream.rstrip("/"), tls), host, port, compression=None, max_size=None) as server:
        print(f"LISTENING {next(iter(server.sockets)).getsockname()[1]}", flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca-file", help="a wss:// upstream: trust this CA (PEM)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (default: the stdlib loop, as voxgate)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(args.host, args.port, args.upstream, args.ca_file))
    else:
        asyncio.run(main(args.host, args.port, args.upstream, args.ca_file))
