"""A fake Realtime upstream for benchmarks: answers like the real API, cheap enough never to be the bottleneck.

Raw asyncio (uvloop when installed) and the small framing in `wsproto`; plain TCP, or TLS
with `--tls-cert/--tls-key` (as toward OpenAI). It:
- accepts any bearer on any path, answers `session.created` (GA shape) on connect and a
  `session.updated` to every `session.update`;
- answers every `input_audio_buffer.append` with one `response.output_audio.delta` of the
  same audio size whose `item_id` is `item_<n>`, n counting the connection's appends (the
  load generator times round trips on it, whatever shape the append had);
- plays server VAD: every `--turn-seconds` (default 5) per connection, at the next append,
  the user "stops speaking" and a whole turn follows, a few events with each following
  echo as a real response streams: speech stopped, commit, input transcription deltas and its
  completion with usage, a response with `--audio-deltas` audio and transcript deltas,
  `response.done` with usage and `rate_limits.updated` (`realtime_events.turn`);
- answers every `response.create` with a `response.done` carrying a unique response id
  and a usage block (ledger ingestion);
- answers pings and closes; ignores everything else;
- answers `POST /v1/realtime/client_secrets` with a minted secret in OpenAI's shape.

Run: python bench/fake_upstream.py --port 0   (prints `LISTENING <port>`; SIGTERM stops it)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import realtime_events as rt
import wsproto
from wsproto import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

_APPEND_MARK = b'"input_audio_buffer.append"'
_CREATE_MARK = b'"response.create"'
_UPDATE_MARK = b'"session.update"'
_CANCEL_MARK = b'"response.cancel"'
_CLEAR_MARK = b'"input_audio_buffer.clear"'
_counter = itertools.count()
EVENTS_PER_ECHO = 4  # turn events sent along with each echo: a response streams over ~10 appends


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, turn_seconds: float, audio_deltas: int) -> None:
        self._head = b""
        self._parser = wsproto.FrameParser()
        self.upgraded = False
        number = next(_counter)
        self._prefix = f"{os.getpid()}_{number}_"
        self._loop = asyncio.get_running_loop()
        # Turns of different sessions fall at different times, as people's do.
        self._next_turn = self._loop.time() + turn_seconds * ((number * 0.618034) % 1.0)
        self._speaking = False
        self._responses = 0
        self._appends = 0
        self._turns = 0
        self._queued: list[bytes] = []  # the current turn's events still to send
        self._turn_seconds = turn_seconds
        self._audio_deltas = audio_deltas
        self._model = "gpt-realtime"
        self._body_left = -1  # bytes of a POST body still to come (-1: not in a POST)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    self.transport.close()
                return
            head, rest = self._head[:end], self._head[end + 4 :]
            if head.startswith(b"POST "):
                self._post(head, rest)
                return
            self._upgrade(head)
            if not rest:
                return
            data = rest
        out: list[bytes] = []
        for opcode, payload in self._parser.feed(data):
            if opcode == OP_TEXT:
                if _APPEND_MARK in payload[:48] or _APPEND_MARK in payload[-64:]:
                    self._on_append(out)
                elif _CREATE_MARK in payload[:48]:
                    self._responses += 1
                    rid = f"resp_{self._prefix}c{self._responses}"
                    out.append(rt.response_done(rid, f"event_done_{self._responses}"))
                elif _UPDATE_MARK in payload[:48]:
                    out.append(rt.session_updated(self._model, payload))
                elif _CANCEL_MARK in payload[:48]:
                    self._cancel(out)
                elif _CLEAR_MARK in payload[:48]:
                    out.append(rt.buffer_cleared())
            elif opcode == OP_PING:
                self.transport.write(wsproto.encode(OP_PONG, payload, False))
            elif opcode == OP_CLOSE:
                self._send(out)
                self.transport.write(wsproto.encode(OP_CLOSE, payload[:2], False))
                self.transport.close()
                return
        self._send(out)

    def _on_append(self, out: list[bytes]) -> None:
        self._appends += 1
        n = self._appends
        out.append(rt.echo_delta(b"%d" % n))
        if self._turn_seconds > 0:
            if not self._speaking:
                self._speaking = True
                out.append(rt.speech_started(f"item_u{self._prefix}{self._turns + 1}", (n - 1) * 20))
            elif self._loop.time() >= self._next_turn:
                self._speaking = False
                self._next_turn += self._turn_seconds
                self._turns += 1
                self._queued = rt.turn(self._prefix, self._turns, n, self._audio_deltas)
                self._queued.reverse()
        for _ in range(min(EVENTS_PER_ECHO, len(self._queued))):
            out.append(self._queued.pop())

    def _cancel(self, out: list[bytes]) -> None:
        """`response.cancel`: what is left of the turn comes at once, without its deltas, the
        response cancelled (with its usage); with no response in flight, OpenAI's error."""
        rest = [e for e in reversed(self._queued) if b'.delta"' not in e[:64]]
        self._queued = []
        if not any(e.startswith(b'{"type":"response.done"') for e in rest):
            out.append(rt.cancel_not_active())
            rest = []
        out.extend(
            e.replace(b'"status":"completed"', b'"status":"cancelled"', 1)
            if e.startswith(b'{"type":"response.done"')
            else e
            for e in rest
        )

    def _send(self, messages: list[bytes]) -> None:
        if messages:
            self.transport.writelines([wsproto.header(OP_TEXT, len(m), False) + m for m in messages])

    def _post(self, head: bytes, body: bytes) -> None:
        """`POST .../realtime/client_secrets`: wait for the whole body, answer, close."""
        line, headers = wsproto.parse_http_head(head)
        if self._body_left < 0:
            self._body_left = int(headers.get("content-length") or 0)
        if len(body) < self._body_left:
            return  # the rest of the body is still coming; _head keeps what arrived
        if "/realtime/client_secrets" not in line:
            answer, status = b'{"error": {"message": "not found"}}', b"404 Not Found"
        else:
            answer, status = rt.minted_secret(body[: self._body_left]), b"200 OK"
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(answer)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + answer
        )
        self.transport.close()

    def _upgrade(self, head: bytes) -> None:
        line, headers = wsproto.parse_http_head(head)
        key = headers.get("sec-websocket-key")
        if not key or "websocket" not in headers.get("upgrade", "").lower():
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()
            return
        target = line.split(" ")[1] if " " in line else ""
        if "model=" in target:
            self._model = target.split("model=", 1)[1].split("&", 1)[0] or self._model
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + wsproto.accept_key(key.encode()) + b"\r\n\r\n"
        )
        self.upgraded = True
        self._send([rt.session_created(self._model)])

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    def factory() -> UpstreamConnection:
        return UpstreamConnection(args.turn_seconds, args.audio_deltas)

    server = await loop.create_server(factory, args.host, args.port, backlog=4096, reuse_address=True, ssl=context)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="... and this key (PEM)")
    parser.add_argument("--turn-seconds", type=float, default=5.0, help="seconds between VAD turns (0: no turns)")
    parser.add_argument("--audio-deltas", type=int, default=10, help="audio deltas per response of a turn")
    wsproto.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
