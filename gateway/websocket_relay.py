"""A plain ASGI WebSocket relay for the low-rate sockets: Live sidebands and forks, translation.

`/v1/realtime` has its own frame-splicing relay (gateway/realtime/fastrelay); these sockets
carry few frames or need each one decoded anyway, so they run as ASGI handlers over the
`websockets` client. A refusal before the upgrade is the OpenAI-shaped HTTP error (or, on a
server without the WebSocket HTTP-response extension, close 1008 with the message). A
transport sees every message through its two handlers, which do the sending themselves
(`to_client(send)` and `upstream.send` by default), so it can meter, rewrite or answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.errors import GatewayError

Message = str | bytes
Handler = Callable[[Message], Awaitable[None]]


async def accept_or_refuse(scope: dict[str, Any], receive: Any, send: Any, error: GatewayError | None) -> bool:
    """Read the connect; accept (True) or refuse with `error`'s HTTP status and body (False)."""
    if (await receive())["type"] != "websocket.connect":
        return False
    if error is None:
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        return True
    headers = [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": error.body_bytes()})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
    return False


def to_client(send: Any) -> Handler:
    """A handler that writes a message to the ASGI client as it is (text or binary)."""

    async def write(message: Message) -> None:
        await send({"type": "websocket.send", "text" if isinstance(message, str) else "bytes": message})

    return write


async def close_client(send: Any, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": code, "reason": reason[:120]})


async def relay(
    receive: Any,
    send: Any,
    upstream: ClientConnection,
    from_client: Handler | None = None,
    from_upstream: Handler | None = None,
) -> Literal["client", "upstream"]:
    """Carry messages both ways until either side ends; returns which side ended first.

    Neither side is closed here: the caller decides how (a Live session may first wait for
    upstream's `session.closed`).
    """
    on_client = from_client or upstream.send
    on_upstream = from_upstream or to_client(send)

    async def client_side() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            await on_client(data if data is not None else message.get("bytes") or b"")

    async def upstream_side() -> None:
        async for data in upstream:
            await on_upstream(data)

    tasks = [asyncio.create_task(client_side()), asyncio.create_task(upstream_side())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError, RuntimeError):
                await task
    return "upstream" if tasks[1] in done else "client"


async def pass_through(receive: Any, send: Any, upstream: ClientConnection) -> None:
    """Relay unchanged; when one side ends, close the other (the client with upstream's code)."""
    if await relay(receive, send, upstream) == "upstream":
        await close_client(send, upstream.close_code or 1000, upstream.close_reason or "")
    else:
        with contextlib.suppress(Exception):
            await upstream.close()
