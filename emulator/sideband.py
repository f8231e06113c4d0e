"""A sideband WebSocket (`/v1/realtime?call_id=rtc_…`) attached to a WebRTC call's session.

It is sent every server event the call's data channel is sent (after a `session.created`
with the session as it is when the socket attaches), and its client events act on the
call's session. Several sidebands may attach to one call; hangup closes them with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.connection import EmulatedSession
from emulator.errors import new_id


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class Sideband:
    """One attached socket; `server_events` holds what it was sent, `client_events` what it sent."""

    def __init__(self, session: EmulatedSession, *, headers: dict[str, str], query: dict[str, str]) -> None:
        self.session = session
        self.headers = headers
        self.query = query
        self.server_events: list[dict[str, Any]] = []
        self.client_events: list[str] = []
        self.closed = False
        self.close_code: int | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._done = asyncio.Event()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame once everything queued before has been written."""
        if not self.closed:
            self._outbox.put_nowait(_Close(code, reason))

    async def wait_closed(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        return self._done.is_set()

    async def run(self, receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        """Serve an accepted ASGI WebSocket until either side closes it."""
        listener = self._outbox.put_nowait
        created = {"type": "session.created", "event_id": new_id("event"), "session": self.session.protocol.session}
        self._outbox.put_nowait(created)
        self.session.listeners.append(listener)
        writer = asyncio.ensure_future(self._write(send))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self.session.feed(message.get("bytes") or b"")
                    continue
                self.client_events.append(text)
                self.session.feed(text)
        finally:
            self.closed = True
            with contextlib.suppress(ValueError):
                self.session.listeners.remove(listener)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._done.set()

    async def _write(self, send: Callable[[Any], Any]) -> None:
        while True:
            item = await self._outbox.get()
            try:
                if isinstance(item, _Close):
                    self.close_code = item.code
                    await send({"type": "websocket.close", "code": item.code, "reason": item.reason})
                    return
                await send({"type": "websocket.send", "text": json.dumps(item)})
                self.server_events.append(item)
            except OSError:
                return
