"""The floor of any relay written in Python: a byte pipe on uvloop that looks at nothing.

Each client connection gets one upstream connection (TLS when `--upstream-tls`), and bytes
move both ways as they are read: `data_received` writes them to the other side, with the
read paused while the other side's buffer is full. No HTTP parsing (the upgrade request and
its answer pass through as bytes), no WebSocket framing, no policy. What this costs per round
trip is what the interpreter and the event loop cost for two reads and two writes: the part of
voxgate's figure that no change to voxgate's own code can remove.

Run: python bench/floor_relay.py --port 0 --upstream-port PORT [--upstream-tls --ca-file ca.pem]
(prints LISTENING <port>).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

import uvloop


class Pipe(asyncio.Protocol):
    """One side of a pair: what it reads, its peer's transport writes."""

    def __init__(self) -> None:
        self.peer: Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # read before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:  # our buffer is full: stop reading the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    tls = ssl.create_default_context(cafile=args.ca_file) if args.upstream_tls else None
    connecting: set[asyncio.Task[None]] = set()

    def accept() -> Pipe:
        client = Pipe()

        async def connect() -> None:
            try:
                _, upstream = await loop.create_connection(
                    Pipe, "127.0.0.1", args.upstream_port, ssl=tls, server_hostname="127.0.0.1" if tls else None
                )
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            upstream.peer, client.peer = client, upstream
            assert upstream.transport is not None
            for data in client.early:
                upstream.transport.write(data)
            client.early.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accept, args.host, args.port)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--upstream-tls", action="store_true")
    parser.add_argument("--ca-file", help="with --upstream-tls: trust this CA (PEM)")
    uvloop.run(main(parser.parse_args()))
