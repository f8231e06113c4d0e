"""`RealtimeEmulator`: the emulated OpenAI Realtime API served on a local port."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import replace
from typing import Any

from emulator.app import create_app, send_json_error
from emulator.call_state import EmulatedCall, MintedSecret
from emulator.calls import WebRtcEndpoints
from emulator.config import EmulatorConfig, Faults, RateLimits
from emulator.connection import EmulatedSession
from emulator.handshake import Refusal, decide, request_headers, request_query
from emulator.live.endpoints import LiveEndpoints
from emulator.server import EmulatorServer
from emulator.session import SessionProtocol
from emulator.translation.endpoints import TranslationEndpoints


class RealtimeEmulator:
    """A protocol-faithful stand-in for `wss://api.openai.com/v1/realtime`.

    ```python
    emu = RealtimeEmulator(EmulatorConfig(api_key="sk-emulator"))
    await emu.start()                      # port 0 picks a free port
    client = AsyncOpenAI(base_url=emu.base_url, api_key="sk-emulator")
    ...
    await emu.stop()
    ```
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.faults = Faults(event_latency_ms=self.config.event_latency_ms)
        self.rate_limits = RateLimits(
            requests_limit=self.config.requests_limit,
            requests_remaining=self.config.requests_limit,
            tokens_limit=self.config.tokens_limit,
            tokens_remaining=self.config.tokens_limit,
        )
        self.sessions: list[EmulatedSession] = []
        # Handshakes answered with an HTTP error: {"status", "headers", "query"}.
        self.refused: list[dict[str, Any]] = []
        # WebRTC: calls answered on POST /v1/realtime/calls, and client secrets minted.
        self.webrtc = WebRtcEndpoints(self)
        # GPT-Live: /v1/live/sessions and its sidebands, forks and controls.
        self.live = LiveEndpoints(self)
        # Realtime translation: /v1/realtime/translations and its client secrets and calls.
        self.translations = TranslationEndpoints(self)
        routes = [*self.webrtc.route_handlers(), *self.live.route_handlers(), *self.translations.route_handlers()]
        self.app = create_app(self._serve_websocket, routes)
        self._server: EmulatorServer | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on `host:port`; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        server = EmulatorServer(self.app)
        await server.serve_on(host, port)
        self._server = server

    @property
    def calls(self) -> list[EmulatedCall]:
        """WebRTC calls answered, in order."""
        return self.webrtc.calls

    @property
    def client_secrets(self) -> list[MintedSecret]:
        """Every `client_secrets` mint: the request body as sent and the session minted."""
        return self.webrtc.client_secrets

    async def stop(self) -> None:
        """End every call, close every live session (1001), abort the stragglers, and stop serving."""
        await self.webrtc.close_all()
        await self.live.close_all()
        await self.translations.close_all()
        live = [s for s in self.sessions if not s.closed]
        for session in live:
            session.close(1001, "server shutting down")
        await asyncio.gather(*(s.wait_closed(1.0) for s in live))
        await self.drop_all()
        if self._server is not None:
            await self._server.shut_down()
            self._server = None

    async def __aenter__(self) -> RealtimeEmulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.port

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`: what `OpenAI(base_url=...)` and VOXGATE_UPSTREAM_URL take."""
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"{self._server.http_url}/v1"

    @property
    def ws_url(self) -> str:
        """`ws://HOST:PORT/v1/realtime` (add `?model=...`)."""
        return self.base_url.replace("http://", "ws://", 1) + "/realtime"

    async def drop_all(self) -> None:
        """Abort every live connection abruptly (TCP reset, no close frame)."""
        live = [s for s in self.sessions if not s.closed]
        for session in live:
            session.drop()
        dropped = [s for s in self.live.sessions if not s.done.is_set()]
        for live_session in dropped:
            live_session.drop()
        await asyncio.gather(*(s.wait_closed(5.0) for s in live), *(s.wait_closed(5.0) for s in dropped))

    # --- serving --------------------------------------------------------------------------

    async def _serve_websocket(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        headers, query = request_headers(scope), request_query(scope)
        if self.faults.connect_delay_s > 0:
            await asyncio.sleep(self.faults.connect_delay_s)
        if "call_id" in query:
            await self.webrtc.serve_sideband(headers, query, receive, send)
            return
        minted = self.webrtc.websocket_secret(headers)
        config = replace(self.config, api_key=minted.value) if isinstance(minted, MintedSecret) else self.config
        decision = minted if isinstance(minted, Refusal) else decide(headers, query, config, self.faults)
        if isinstance(decision, Refusal):
            self.refused.append({"status": decision.status, "headers": headers, "query": query})
            await send_json_error(send, decision.status, decision.body, decision.headers, websocket=True)
            return
        if isinstance(minted, MintedSecret):  # an ephemeral key: its session's config
            protocol = self.webrtc.new_protocol([minted.request.get("session") or {}], session_id=minted.session["id"])
        else:
            protocol = SessionProtocol(
                config=self.config,
                rate_limits=self.rate_limits,
                now=time.time(),
                model=decision.model,
                intent=decision.intent,
            )
        client = tuple(scope.get("client") or ())
        session = EmulatedSession(
            protocol,
            headers=headers,
            query=query,
            config=self.config,
            faults=lambda: self.faults,
            abort=lambda: self.abort_connection(client),
        )
        self.sessions.append(session)
        await send({"type": "websocket.accept", "subprotocol": decision.subprotocol, "headers": []})
        await session.run(receive, send)

    def abort_connection(self, client: tuple[Any, ...]) -> None:
        """Reset the TCP connection of the peer `client` (host, port): no close frame."""
        # ASGI has no "abort": find uvicorn's protocol for this peer and reset its transport.
        if self._server is None or not client:
            return
        for connection in list(self._server.server_state.connections):
            if tuple(getattr(connection, "client", None) or ()) != client:
                continue
            transport = getattr(connection, "transport", None)
            if transport is None or transport.is_closing():
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
