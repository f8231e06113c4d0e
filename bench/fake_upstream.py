"""A fake Realtime upstream for benchmarks: cheap enough never to be the bottleneck.

Raw asyncio (uvloop when installed) and the small framing in `wsproto`:
- accepts any bearer on any path, answers `session.created` (GA shape) on connect;
- answers every `input_audio_buffer.append` with one `response.output_audio.delta` of the
  same audio size whose `item_id` carries the append's `event_id` (the load generator
  matches round trips on it);
- answers every `response.create` with a `response.done` carrying a unique response id
  and a usage block, so ledger ingestion can be measured;
- answers pings and closes; ignores everything else;
- answers `POST /v1/realtime/client_secrets` with a minted secret in OpenAI's shape (a
  fresh `ek_` value and session id each time), so `client_secrets` admission through the
  gateway can be measured.

Run: python bench/fake_upstream.py --port 0   (prints `LISTENING <port>`; SIGTERM stops it)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wsproto
from wsproto import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

AUDIO_B64 = ("AAAAAAEAAgADAP//" * 80).encode()  # 1280 base64 chars = 960 bytes = 20 ms of 24 kHz PCM16
_APPEND_MARK = b'"input_audio_buffer.append"'
_CREATE_MARK = b'"response.create"'
_EVENT_ID = b'"event_id": "'
_counter = itertools.count()


def minted_secret(body: bytes) -> bytes:
    """A `POST /v1/realtime/client_secrets` answer: the requested session with an id, and a secret."""
    try:
        session = json.loads(body).get("session") or {}
    except (ValueError, AttributeError):
        session = {}
    session = {
        "type": "realtime",
        "object": "realtime.session",
        "model": "gpt-realtime",
        **session,
        "id": "sess_" + secrets.token_hex(10),
    }
    return json.dumps(
        {"value": "ek_" + secrets.token_hex(16), "expires_at": int(time.time()) + 600, "session": session}
    ).encode()


def session_created(model: str) -> bytes:
    """A `session.created` in the GA shape the official SDKs parse."""
    event = {
        "type": "session.created",
        "event_id": "event_" + secrets.token_hex(10),
        "session": {
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_" + secrets.token_hex(10),
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": int(time.time()) + 3600,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": None,
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
            },
            "include": None,
        },
    }
    return json.dumps(event).encode()


def response_done(response_id: str, event_id: str) -> bytes:
    event = {
        "type": "response.done",
        "event_id": event_id,
        "response": {
            "object": "realtime.response",
            "id": response_id,
            "status": "completed",
            "status_details": None,
            "output": [],
            "conversation_id": "conv_bench",
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
            "usage": {
                "total_tokens": 253,
                "input_tokens": 132,
                "output_tokens": 121,
                "input_token_details": {
                    "text_tokens": 119,
                    "audio_tokens": 13,
                    "image_tokens": 0,
                    "cached_tokens": 64,
                    "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
                },
                "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
            },
            "metadata": None,
        },
    }
    return json.dumps(event).encode()


_DELTA_A = b'{"type": "response.output_audio.delta", "event_id": "event_'
_DELTA_B = b'", "response_id": "resp_bench", "item_id": "item_'
_DELTA_C = b'", "output_index": 0, "content_index": 0, "delta": "' + AUDIO_B64 + b'"}'


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_body_left", "_head", "_parser", "_prefix", "_responses", "transport", "upgraded")

    def __init__(self) -> None:
        self._head = b""
        self._parser = wsproto.FrameParser()
        self.upgraded = False
        self._prefix = f"resp_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}_"
        self._responses = 0
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
        write = self.transport.write
        for opcode, payload in self._parser.feed(data):
            if opcode == OP_TEXT:
                head = payload[:48]
                if _APPEND_MARK in head:
                    i = payload.find(_EVENT_ID)
                    seq = b"0"
                    if i >= 0:
                        i += len(_EVENT_ID)
                        seq = payload[i : payload.find(b'"', i)]
                    body = b"".join((_DELTA_A, seq, _DELTA_B, seq, _DELTA_C))
                    write(wsproto.header(OP_TEXT, len(body), False) + body)
                elif _CREATE_MARK in head:
                    self._responses += 1
                    body = response_done(f"{self._prefix}{self._responses}", f"event_done_{self._responses}")
                    write(wsproto.encode(OP_TEXT, body, False))
            elif opcode == OP_PING:
                write(wsproto.encode(OP_PONG, payload, False))
            elif opcode == OP_CLOSE:
                write(wsproto.encode(OP_CLOSE, payload[:2], False))
                self.transport.close()
                return

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
            answer, status = minted_secret(body[: self._body_left]), b"200 OK"
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
        model = "gpt-realtime"
        target = line.split(" ")[1] if " " in line else ""
        if "model=" in target:
            model = target.split("model=", 1)[1].split("&", 1)[0] or model
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + wsproto.accept_key(key.encode()) + b"\r\n\r\n"
        )
        self.upgraded = True
        self.transport.write(wsproto.encode(OP_TEXT, session_created(model), False))

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamConnection, host, port, backlog=4096, reuse_address=True)
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
    args = parser.parse_args()
    wsproto.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
