"""A minimal raw Realtime WebSocket client, for tests and the demo (no SDK involved)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class RealtimeClient:
    """Sends client events as JSON and keeps every server event it has read in `events`."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
    ) -> RealtimeClient:
        extra = dict(headers or {})
        if api_key is not None:
            extra["Authorization"] = f"Bearer {api_key}"
        connection = await websockets.connect(
            url,
            additional_headers=extra,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            compression=None,
            max_size=None,
        )
        return cls(connection)

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.connection.send(json.dumps({"type": event_type, **fields}))

    async def send_raw(self, text: str) -> None:
        await self.connection.send(text)

    async def append_audio(self, audio: bytes) -> None:
        await self.send("input_audio_buffer.append", audio=base64.b64encode(audio).decode())

    async def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        self.events.append(event)
        return event

    async def wait_for(
        self, event_type: str, timeout: float = 5.0, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """Read events until one of `event_type` (matching `where`) arrives; return it."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if event["type"] == event_type and (where is None or where(event)):
                    return event

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]
