"""Serving the emulator's ASGI app on uvicorn inside the running event loop.

The emulator stands alone (it never imports the gateway), so it has its own small runner:
no head limits or relay protocol, just uvicorn with the options the OpenAI SDKs expect
(no permessage-deflate; frame sizes are the client's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class EmulatorServer(uvicorn.Server):
    """uvicorn serving one app in this loop: `await serve_on(host, port)`, then `await shut_down()`."""

    def __init__(self, app: Any) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                ws="websockets-sansio",
                ws_per_message_deflate=False,
                ws_max_size=16 * 1024 * 1024,
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )
        self.host = ""
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to whoever owns the process (the CLI or the test runner).
        yield

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def serve_on(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (0 picks a free port); returns once connections are accepted."""
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(512)
        listener.setblocking(False)
        self.host, self.port = host, listener.getsockname()[1]
        self._task = asyncio.create_task(self.serve(sockets=[listener]))
        while not self.started:
            if self._task.done():
                self._task.result()  # raises the startup error
                raise RuntimeError("the emulator's server exited during startup")
            await asyncio.sleep(0.01)

    async def shut_down(self) -> None:
        self.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
