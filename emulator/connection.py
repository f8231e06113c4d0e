"""The I/O shell around one `SessionProtocol`: a transport, timers and faults.

The transport is an ASGI WebSocket (`run`) or anything with the `Transport` shape (`serve`),
e.g. a WebRTC data channel (`emulator.webrtc`). How it drives the core:
1. send `protocol.open()`;
2. for every text message, send `protocol.receive_text(frame)`, then stream each response
   `protocol.take_started()` returns, one `Step` at a time, waiting for the step to be
   written (plus audio pacing) before asking for the next one, so a cancel can cut in;
3. when `max_session_seconds` is up, send `protocol.expire()` and close with 1000.
Every outgoing event goes through one queue and one writer, so they leave in the order the
core produced them; the writer applies `event_latency_ms` and `drop_after_server_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from emulator.config import EmulatorConfig, Faults
from emulator.responses import ResponseRun
from emulator.session import SessionProtocol

SESSION_EXPIRED_CLOSE_CODE = 1000
SESSION_EXPIRED_CLOSE_REASON = "session expired"


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class Transport(Protocol):
    """What a session reads client messages from and writes server events to."""

    async def receive(self) -> str | bytes | None:
        """The next client message; `None` once the peer has gone."""
        ...

    async def send_text(self, text: str) -> None:
        """Write one event; raise `OSError` when the peer has gone."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class AsgiWebSocket:
    """An accepted ASGI WebSocket as a `Transport`."""

    def __init__(self, receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        self._receive = receive
        self._send = send

    async def receive(self) -> str | bytes | None:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


class AudioOutput(Protocol):
    """The media track a WebRTC session speaks on (`emulator.webrtc.ToneTrack`)."""

    def play(self, ms: int) -> None: ...

    def clear(self) -> None: ...

    async def drained(self, timeout: float) -> None: ...


class EmulatedSession:
    """One accepted connection, as tests see it.

    `headers` (lower-cased names) and `query` are the handshake's; `client_events` holds every
    parsed client event, `server_events` every event actually written, in order.
    """

    def __init__(
        self,
        protocol: SessionProtocol,
        *,
        headers: dict[str, str],
        query: dict[str, str],
        config: EmulatorConfig,
        faults: Callable[[], Faults],
        abort: Callable[[], None],
        audio_output: AudioOutput | None = None,
    ) -> None:
        self.protocol = protocol
        self.id = protocol.id
        self.headers = headers
        self.query = query
        self.server_events: list[dict[str, Any]] = []
        self.closed = False
        self.close_code: int | None = None  # set when the emulator closed the socket itself
        self.dropped = False
        self._config = config
        self._faults = faults  # read on every use: tests may swap the emulator's Faults object
        self._abort = abort
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()
        # WebRTC: audio goes on this track instead of `response.output_audio.delta` events.
        self.audio_output = audio_output
        self.transport = "webrtc" if audio_output is not None else "websocket"
        self.serving = False
        # Called with every event written (sideband sockets of a WebRTC call).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._audio_runs: set[str] = set()  # responses whose audio is on the track

    @property
    def client_events(self) -> list[dict[str, Any]]:
        return self.protocol.client_events

    @property
    def model(self) -> str | None:
        model = self.protocol.session.get("model")
        return str(model) if model is not None else None

    # --- control from the emulator ---------------------------------------------------------

    def close(self, code: int = 1001, reason: str = "") -> None:
        """Close with a close frame once everything queued before has been written."""
        self._outbox.put_nowait(_Close(code, reason))

    def drop(self) -> None:
        """Abort the TCP connection: no close frame, pending events are lost."""
        if not self.closed:
            self.dropped = True
            self._abort()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        return self._done.is_set()

    # --- the loop --------------------------------------------------------------------------

    async def run(self, receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        """Serve an accepted ASGI WebSocket until it disconnects."""
        await self.serve(AsgiWebSocket(receive, send))

    async def serve(self, transport: Transport) -> None:
        """Serve `transport` until it reports the peer gone."""
        self.serving = True
        self._spawn(self._write(transport))
        self._spawn(self._expire_later())
        self._enqueue(self.protocol.open())
        try:
            while True:
                message = await transport.receive()
                if message is None:
                    break
                self.feed(message)
        finally:
            self.closed = True
            for run in list(self.protocol.runs.values()):
                run.abandon()
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._done.set()

    def feed(self, message: str | bytes) -> None:
        """One client message (from the transport, or a WebRTC call's sideband socket)."""
        if self.closed:
            return
        text = isinstance(message, str)
        self._after(self.protocol.receive_text(str(message)) if text else self.protocol.receive_bytes())

    def feed_audio(self, pcm16: bytes) -> None:
        """Input audio from a media track: 16-bit mono PCM at the input buffer's rate."""
        if self.serving and not self.closed:
            self._after(self.protocol.receive_audio(pcm16))

    def _after(self, events: list[dict[str, Any]]) -> None:
        if self.audio_output is not None:
            events = self._audio_side_effects(events)
        self._enqueue(events)
        for run in self.protocol.take_started():
            self._spawn(self._stream(run))

    def _audio_side_effects(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """WebRTC: a clear, or a response cut off by the user's speech, empties the track."""
        assert self.audio_output is not None
        out: list[dict[str, Any]] = []
        for event in events:
            out.append(event)
            if event["type"] == "output_audio_buffer.cleared":
                self._audio_runs.discard(event["response_id"])
                self.audio_output.clear()
            elif event["type"] == "response.done" and event["response"]["id"] in self._audio_runs:
                details = event["response"].get("status_details") or {}
                if details.get("reason") == "turn_detected":
                    self._audio_runs.discard(event["response"]["id"])
                    self.audio_output.clear()
                    out.append(self.protocol.audio_cleared(event["response"]["id"]))
        return out

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enqueue(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._outbox.put_nowait(event)

    async def _stream(self, run: ResponseRun) -> None:
        steps = run.steps()
        while not run.finished:
            step = next(steps, None)
            if step is None:
                break
            events = step.events
            if self.audio_output is not None:
                events = self._on_track(run, step.audio_ms, events)
            self._enqueue(events)
            await self._outbox.join()
            pause = step.audio_ms / 1000 if self._config.pace_audio else 0.0
            await asyncio.sleep(pause)
        if self.audio_output is not None and run.id in self._audio_runs:
            # `output_audio_buffer.stopped` once the track has played the response's audio.
            await self.audio_output.drained(timeout=30.0)
            if run.id in self._audio_runs:
                self._audio_runs.discard(run.id)
                self._enqueue([self.protocol.audio_stopped(run.id)])

    def _on_track(self, run: ResponseRun, audio_ms: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """WebRTC: the audio of a step goes on the track; its delta events are not sent."""
        assert self.audio_output is not None
        kept = [e for e in events if e["type"] != "response.output_audio.delta"]
        if audio_ms:
            if run.id not in self._audio_runs:
                self._audio_runs.add(run.id)
                kept.insert(0, self.protocol.audio_started(run.id))
            self.audio_output.play(audio_ms)
        return kept

    async def _expire_later(self) -> None:
        await asyncio.sleep(self._config.max_session_seconds)
        self._enqueue(self.protocol.expire())
        self.close(SESSION_EXPIRED_CLOSE_CODE, SESSION_EXPIRED_CLOSE_REASON)

    async def _write(self, transport: Transport) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _Close):
                    self.close_code = item.code
                    await transport.close(item.code, item.reason)
                    return
                latency = self._faults().event_latency_ms
                if latency > 0:
                    await asyncio.sleep(latency / 1000)
                await transport.send_text(json.dumps(item))
                self.server_events.append(item)
                for listener in list(self.listeners):
                    listener(item)
                limit = self._faults().drop_after_server_events
                if limit is not None and len(self.server_events) >= limit:
                    self.drop()
                    return
            except OSError:  # the client went away (uvicorn's ClientDisconnected)
                return
            finally:
                self._outbox.task_done()
