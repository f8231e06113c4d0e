"""The I/O shell around one `SessionProtocol`: ASGI WebSocket frames, timers and faults.

How it drives the core:
1. send `protocol.open()`;
2. for every text frame, send `protocol.receive_text(frame)`, then stream each response
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
from typing import Any

from gateway.emulator.config import EmulatorConfig, Faults
from gateway.emulator.responses import ResponseRun
from gateway.emulator.session import SessionProtocol

SESSION_EXPIRED_CLOSE_CODE = 1000
SESSION_EXPIRED_CLOSE_REASON = "session expired"


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


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
        self._spawn(self._write(send))
        self._spawn(self._expire_later())
        self._enqueue(self.protocol.open())
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    events = self.protocol.receive_text(message["text"])
                else:
                    events = self.protocol.receive_bytes()
                self._enqueue(events)
                for run in self.protocol.take_started():
                    self._spawn(self._stream(run))
        finally:
            self.closed = True
            for run in list(self.protocol.runs.values()):
                run.abandon()
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._done.set()

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
            self._enqueue(step.events)
            await self._outbox.join()
            pause = step.audio_ms / 1000 if self._config.pace_audio else 0.0
            await asyncio.sleep(pause)

    async def _expire_later(self) -> None:
        await asyncio.sleep(self._config.max_session_seconds)
        self._enqueue(self.protocol.expire())
        self.close(SESSION_EXPIRED_CLOSE_CODE, SESSION_EXPIRED_CLOSE_REASON)

    async def _write(self, send: Callable[[Any], Any]) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _Close):
                    self.close_code = item.code
                    await send({"type": "websocket.close", "code": item.code, "reason": item.reason})
                    return
                latency = self._faults().event_latency_ms
                if latency > 0:
                    await asyncio.sleep(latency / 1000)
                await send({"type": "websocket.send", "text": json.dumps(item)})
                self.server_events.append(item)
                limit = self._faults().drop_after_server_events
                if limit is not None and len(self.server_events) >= limit:
                    self.drop()
                    return
            except OSError:  # the client went away (uvicorn's ClientDisconnected)
                return
            finally:
                self._outbox.task_done()
