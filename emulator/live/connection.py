"""The I/O shell around one `LiveProtocol`: its primary transport, sidebands, and timers.

How it drives the core:
1. `start` (HTTP create or SIP accept) or the primary's first `session.start` starts it;
2. every client text frame goes to `protocol.receive_text` (sidebands with their own event
   set), media audio to `protocol.receive_audio`; each output goes to the primary ("primary"),
   the sidebands ("sideband") or both ("all"), an error only back to whoever caused it;
3. every `live_usage_interval_s` it sends `protocol.tick(now)`; after `max_session_seconds`
   `close("expired")`; on WebRTC with `idle_timeout_s` it pauses after that much silence;
4. once `session.closed` is out, every socket closes with 1000 (`SESSION_CLOSED_CODE`).
A primary that disconnects without `session.close` ends the session as `connection_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from emulator.config import EmulatorConfig, Faults
from emulator.connection import Transport
from emulator.errors import ProtocolError
from emulator.live.events import PRIMARY_EVENTS, SIDEBAND_EVENTS, live_error
from emulator.live.protocol import LiveProtocol
from emulator.live.voice import Out

SESSION_CLOSED_CODE = 1000
IDLE_CHECK_S = 0.05


class Outlet:
    """One socket's ordered writer; `server_events` records what was written."""

    def __init__(
        self, transport: Transport, latency: Callable[[], float], after_send: Callable[[int], None] | None = None
    ) -> None:
        self.transport = transport
        self._after_send = after_send  # called with the count of events written
        self.server_events: list[dict[str, Any]] = []
        self.closed = False
        self.close_code: int | None = None
        self._latency = latency
        self._queue: asyncio.Queue[dict[str, Any] | int] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._write())

    def send(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def close(self, code: int = SESSION_CLOSED_CODE) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(code)

    async def drain(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, int):
                    self.close_code = item
                    await self.transport.close(item, "session closed")
                    return
                if self._latency() > 0:
                    await asyncio.sleep(self._latency() / 1000)
                await self.transport.send_text(json.dumps(item))
                self.server_events.append(item)
                if self._after_send is not None:
                    self._after_send(len(self.server_events))
            except Exception:  # the peer has gone (the exception depends on the transport)
                return


class LiveSession:
    """One Live session as tests see it: `protocol`, `primary` and `sidebands` (each an `Outlet`)."""

    def __init__(self, protocol: LiveProtocol, config: EmulatorConfig, faults: Callable[[], Faults]) -> None:
        self.protocol = protocol
        self.id = protocol.id
        self.config = config
        self.faults = faults
        self.primary: Outlet | None = None
        self.sidebands: list[Outlet] = []  # attached now
        self.detached: list[Outlet] = []  # sidebands that have gone (kept for tests)
        self.forked_from: str | None = None
        self.sideband_queries: list[dict[str, str]] = []  # each attach's query (`graceful_close`)
        self.hung_up = False
        self.abort: Callable[[], None] | None = None  # resets the primary's connection
        self.dropped = False
        self.rejected_with: int | None = None  # SIP: the reject status code
        self.referred_to: str | None = None  # SIP: the refer target
        self.headers: dict[str, str] = {}
        self.audio_output: Any = None  # WebRTC: the peer's ToneTrack
        self.on_end: Callable[[], None] | None = None  # WebRTC: close the peer
        self.allowed_server_events: Any = "all"
        self.allowed_client_events: Any = "all"
        self.done = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_speech = time.time()

    @property
    def closed(self) -> bool:
        return self.protocol.closed_reason is not None

    @property
    def server_events(self) -> list[dict[str, Any]]:
        return self.primary.server_events if self.primary is not None else []

    def _latency(self) -> float:
        return self.faults().event_latency_ms

    # --- starting and timers --------------------------------------------------------------------

    def start(self, config: dict[str, Any]) -> None:
        """Start from an HTTP create or accept (the data channel gets `session.started` when it opens)."""
        self.protocol.start(config, time.time())
        self._started()

    def _started(self) -> None:
        self._spawn(self._ticker())
        self._spawn(self._expire_later())
        client = (self.protocol.session or {}).get("client") or {}
        channel = client.get("data_channel") or {}
        self.allowed_client_events = channel.get("allowed_client_events", "all")
        self.allowed_server_events = channel.get("allowed_server_events", "all")
        if self.protocol.transport == "webrtc" and self.protocol.idle_timeout_s:
            self._spawn(self._idle_watch())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.config.live_usage_interval_s)
            self.emit(self.protocol.tick(time.time()))

    async def _expire_later(self) -> None:
        await asyncio.sleep(self.config.max_session_seconds)
        self.end("expired")

    async def _idle_watch(self) -> None:
        timeout = float(self.protocol.idle_timeout_s or 0)
        while not self.closed:
            await asyncio.sleep(IDLE_CHECK_S)
            if time.time() - self._last_speech >= timeout:
                self.emit(self.protocol.pause(time.time()))

    # --- events ---------------------------------------------------------------------------------

    def emit(self, outs: list[Out], origin: Outlet | None = None) -> None:
        """Route core outputs; after `session.closed` every socket closes."""
        closing = False
        for audience, event in outs:
            if event["type"] == "error" and origin is not None:
                origin.send(event)
                continue
            if audience in ("all", "primary") and self.primary is not None and self._server_allowed(event):
                self.primary.send(event)
            if audience in ("all", "sideband"):
                for sideband in self.sidebands:
                    sideband.send(event)
            closing = closing or event["type"] == "session.closed"
        self._play()
        if closing:
            self._finish()

    def _server_allowed(self, event: dict[str, Any]) -> bool:
        allowed = self.allowed_server_events
        if self.protocol.transport != "webrtc" or allowed == "all":
            return True
        for selector in allowed:
            if selector.get("type") == event["type"]:
                nested = selector.get("response_event")
                if nested is None or nested == (event.get("event") or {}).get("type"):
                    return True
        return False

    def _play(self) -> None:
        voice = self.protocol.voice
        if voice is not None and self.audio_output is not None:
            ms = voice.take_playback()
            if ms:
                self.audio_output.play(ms)

    def feed(self, text: str, origin: Outlet | None = None) -> None:
        """A client text frame from the primary (`origin` None) or a sideband."""
        if origin is None and self.protocol.transport == "webrtc" and self.allowed_client_events != "all":
            kind = _type_of(text)
            if kind not in self.allowed_client_events:
                refusal = ProtocolError(
                    f"The data channel may not send '{kind}'.", code="event_not_allowed", param="type"
                )
                self.emit([("primary", live_error(refusal, _event_id_of(text)))])
                return
        allowed = PRIMARY_EVENTS if origin is None else SIDEBAND_EVENTS
        if origin is None and self.protocol.transport != "websocket":
            allowed = allowed - {"session.start", "session.input_audio.append"}
        was_started = self.protocol.started
        self.emit(self.protocol.receive_text(text, time.time(), allowed=allowed), origin)
        if not was_started and self.protocol.started:
            self._started()

    def feed_audio(self, data: bytes) -> None:
        """Media or appended audio, in the session's format."""
        outs = self.protocol.receive_audio(data, time.time())
        voice = self.protocol.voice
        if voice is not None and (
            voice.speech_started or any(e["type"] == "session.input_transcript.delta" for _, e in outs)
        ):
            self._last_speech = time.time()
        self.emit(outs)

    def end(self, reason: str) -> None:
        """End from outside (hangup, expiry, disconnect, shutdown): `session.closed`, then close."""
        outs = self.protocol.close(reason, time.time())
        if outs:
            self.emit(outs)
        else:
            self._finish()

    def _finish(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.primary is not None:
            self.primary.close(SESSION_CLOSED_CODE)
        for sideband in self.sidebands:
            sideband.close(SESSION_CLOSED_CODE)
        if self.on_end is not None:
            self.on_end()
        self.done.set()

    # --- serving sockets --------------------------------------------------------------------------

    async def serve_primary(self, transport: Transport) -> None:
        """Serve the primary transport until it goes; a silent departure is `connection_lost`."""
        self.primary = Outlet(transport, self._latency, self._maybe_drop)
        if self.protocol.started and self.protocol.session is not None:
            self.primary.send(self.protocol.start_event())
            if self.allowed_client_events != "all" or self.allowed_server_events != "all":
                self.primary.send(self.protocol.permissions_info())
        await self._pump(transport, None)
        self.end("connection_lost")
        await self.primary.drain(2.0)

    def drop(self) -> None:
        """Abort the primary connection (TCP reset, no `session.closed` for it)."""
        if self.abort is not None and not self.done.is_set():
            self.dropped = True
            self.abort()

    def _maybe_drop(self, sent: int) -> None:
        limit = self.faults().drop_after_server_events
        if limit is not None and sent >= limit:
            self.drop()

    async def serve_sideband(self, transport: Transport) -> None:
        outlet = Outlet(transport, self._latency)
        self.sidebands.append(outlet)
        self.emit(self.protocol.on_attach())
        await self._pump(transport, outlet)
        outlet.closed = True
        with contextlib.suppress(ValueError):
            self.sidebands.remove(outlet)
            self.detached.append(outlet)

    async def _pump(self, transport: Transport, origin: Outlet | None) -> None:
        while True:
            message = await transport.receive()
            if message is None:
                return
            if isinstance(message, str):
                self.feed(message, origin)

    async def wait_closed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        return self.done.is_set()


def _type_of(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("type") if isinstance(value, dict) else None


def _event_id_of(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None
