"""The emulator's GPT-Live surface (`/v1/live/sessions`…), routed on method and upgrade.

- `GET /v1/live/sessions` (upgrade): a primary WebSocket; the first frame must be `session.start`;
- `POST /v1/live/sessions`: WebRTC create (`transport.type: "webrtc"` + SDP offer → answer)
  or an outbound SIP call (`transport.type: "sip"`);
- `GET …/{id}/attach` (upgrade): a sideband (`?graceful_close=` recorded);
- `GET …/{id}/fork` (upgrade) and `POST …/{id}/fork` (WebRTC): a new, separately billed
  session from a stored one (`store: true`);
- `POST …/{id}/hangup|accept|reject|refer`, `GET …/{id}/content`: `emulator.live.controls`;
- `POST /_emulator/live/sip/ring` (test-only): an inbound SIP call, announced by a signed webhook.
Every socket and request needs a standard key (GPT-Live has no ephemeral keys).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from litestar import Request, Response, WebSocket, asgi, post, websocket
from litestar.params import FromPath

from emulator.app import send_json_error
from emulator.asgi import parse_json_object, read_body, send_http_error, send_json
from emulator.call_state import EPHEMERAL_PREFIX
from emulator.connection import AsgiWebSocket
from emulator.errors import ProtocolError, http_error_body
from emulator.handshake import Refusal, decide, request_headers, request_query
from emulator.http_replies import bearer_key, json_response
from emulator.live import settings
from emulator.live.connection import LiveSession
from emulator.live.controls import control_handlers, ring
from emulator.live.protocol import LiveProtocol
from emulator.live.sip_webhooks import SentWebhook, ring_handler
from emulator.webrtc import CallPeer, DataChannelTransport, OfferError, check_offer, use_loopback_ice

if TYPE_CHECKING:
    from emulator.emulator import RealtimeEmulator

LIVE_PATH = "/v1/live/sessions"
INVALID = "invalid_request_error"
WEBRTC_RATE = 24_000
# Test-only: an outbound SIP call to a trunk on this host fails with an error quoting the transport
# (its password raw, JSON-escaped and URL-encoded), as a careless provider might.
ECHO_ERROR_HOST = "echo-error.invalid"


class LiveEndpoints:
    """The state and routes of the GPT-Live surface of one `RealtimeEmulator`."""

    def __init__(self, emulator: RealtimeEmulator) -> None:
        self.emu = emulator
        self.sessions: list[LiveSession] = []
        self.refused: list[dict[str, Any]] = []
        self.webhooks: list[SentWebhook] = []  # inbound SIP calls rung over HTTP (emulator.live.sip_webhooks)
        self._peers: dict[str, CallPeer] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def ring(self) -> str:
        """An inbound SIP call waiting for accept or reject; returns its session id."""
        return ring(self)

    def find(self, session_id: str) -> LiveSession | None:
        return next((s for s in self.sessions if s.id == session_id), None)

    def new_session(self, transport: str) -> LiveSession:
        protocol = LiveProtocol(self.emu.config, transport=transport)
        protocol.response_fails = self.emu.faults.live_response_fails
        session = LiveSession(protocol, self.emu.config, lambda: self.emu.faults)
        self.sessions.append(session)
        return session

    async def close_all(self) -> None:
        live = [s for s in self.sessions if not s.done.is_set()]
        for session in live:
            session.end("connection_lost")
        await asyncio.gather(*(s.wait_closed(2.0) for s in live))
        await asyncio.gather(*(peer.close() for peer in self._peers.values()), *self._closing, return_exceptions=True)
        self._peers.clear()

    # --- admission -----------------------------------------------------------------------------

    async def admit(self, headers: dict[str, str], path: str) -> Refusal | None:
        """Faults, then the key: None admits."""
        faults = self.emu.faults
        if faults.connect_delay_s > 0:
            await asyncio.sleep(faults.connect_delay_s)
        decision = decide(headers, {}, self.emu.config, faults)
        if not isinstance(decision, Refusal) and (bearer_key(headers) or "").startswith(EPHEMERAL_PREFIX):
            body = http_error_body(
                "GPT-Live does not accept ephemeral keys.", type="invalid_request_error", code="invalid_api_key"
            )
            decision = Refusal(401, body)
        if isinstance(decision, Refusal):
            self.refused.append({"status": decision.status, "headers": headers, "path": path})
            return decision
        return None

    async def _refuse_socket(self, send: Any, status: int, message: str, code: str, path: str) -> None:
        self.refused.append({"status": status, "path": path})
        body = http_error_body(message, type="invalid_request_error", code=code, param="session_id")
        await send_json_error(send, status, body, [], websocket=True)

    def stored(self, session_id: str) -> tuple[LiveSession | None, tuple[int, str, str] | None]:
        parent = self.find(session_id)
        if parent is None or parent.protocol.session is None:
            return None, (404, f"Live session '{session_id}' not found.", "not_found")
        if not parent.protocol.session.get("store"):
            return None, (400, f"Live session '{session_id}' was not stored (store: true).", "session_not_stored")
        return parent, None

    # --- routes --------------------------------------------------------------------------------

    def route_handlers(self) -> list[Any]:
        @asgi(LIVE_PATH, copy_scope=True)
        async def sessions(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "websocket":
                await self.serve_websocket(scope, receive, send, fork_of=None)
            elif scope["method"] == "POST":
                headers = request_headers(scope)
                status, body, extra = await self.create(headers, await read_body(receive), scope["path"], fork_of=None)
                await send_json(send, status, body, extra)
            else:
                await send_http_error(send, 405, "Use POST, or a WebSocket upgrade.", code="method_not_allowed")

        # Litestar routes a method of an ASGI handler with path parameters wrongly, so the
        # paths with a session id pair a WebSocket handler with a POST handler instead.
        @websocket(LIVE_PATH + "/{session_id:str}/fork")
        async def fork_socket(socket: WebSocket[Any, Any, Any], session_id: FromPath[str]) -> None:
            await self.serve_websocket(socket.scope, socket.receive, socket.send, fork_of=session_id)

        @post(LIVE_PATH + "/{session_id:str}/fork", status_code=201)
        async def fork_webrtc(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
            headers = {name.lower(): value for name, value in request.headers.items()}
            status, body, extra = await self.create(headers, await request.body(), request.url.path, fork_of=session_id)
            return json_response(status, body, extra)

        @websocket(LIVE_PATH + "/{session_id:str}/attach")
        async def attach(socket: WebSocket[Any, Any, Any], session_id: FromPath[str]) -> None:
            await self.serve_sideband(socket.scope, socket.receive, socket.send, session_id)

        return [sessions, fork_socket, fork_webrtc, attach, *control_handlers(self), ring_handler(self)]

    # --- WebSockets ----------------------------------------------------------------------------

    async def serve_websocket(self, scope: Any, receive: Any, send: Any, *, fork_of: str | None) -> None:
        """A primary (`fork_of` None) or a fork socket; both start with `session.start`."""
        await receive()  # websocket.connect
        headers = request_headers(scope)
        if (refusal := await self.admit(headers, scope["path"])) is not None:
            await send_json_error(send, refusal.status, refusal.body, refusal.headers, websocket=True)
            return
        parent = None
        if fork_of is not None:
            parent, problem = self.stored(fork_of)
            if problem is not None:
                await self._refuse_socket(send, *problem, scope["path"])
                return
        session = self.new_session("websocket")
        session.headers = headers
        client = tuple(scope.get("client") or ())
        session.abort = lambda: self.emu.abort_connection(client)
        if parent is not None:
            session.forked_from = parent.id
            session.protocol.fork_parent = parent.protocol.session
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        await session.serve_primary(AsgiWebSocket(receive, send))

    async def serve_sideband(self, scope: Any, receive: Any, send: Any, session_id: str) -> None:
        await receive()
        headers = request_headers(scope)
        if (refusal := await self.admit(headers, scope["path"])) is not None:
            await send_json_error(send, refusal.status, refusal.body, refusal.headers, websocket=True)
            return
        session = self.find(session_id)
        if session is None or session.done.is_set():
            await self._refuse_socket(send, 404, f"Live session '{session_id}' not found.", "not_found", scope["path"])
            return
        session.sideband_queries.append(request_query(scope))
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        await session.serve_sideband(AsgiWebSocket(receive, send))

    # --- HTTP create and fork --------------------------------------------------------------------

    async def create(
        self, headers: dict[str, str], raw: bytes, path: str, *, fork_of: str | None
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """A WebRTC create or fork (or an outbound SIP call): (status, JSON body, headers)."""
        if (refusal := await self.admit(headers, path)) is not None:
            return refusal.status, refusal.body, refusal.headers
        body = parse_json_object(raw)
        if body is None:
            return (
                400,
                http_error_body("The request body must be a JSON object.", type=INVALID, code="invalid_json"),
                [],
            )
        try:
            return 201, await self._create(body, headers, fork_of), []
        except ProtocolError as exc:
            status = 404 if exc.code == "not_found" else 400
            return status, http_error_body(exc.message, type=INVALID, code=exc.code, param=exc.param), []

    async def _create(self, body: dict[str, Any], headers: dict[str, str], fork_of: str | None) -> dict[str, Any]:
        settings.check_keys(body, {"session": None, "transport": None}, "body")
        transport = settings.check_keys(
            body.get("transport"), {"type": None, "sdp": None, "destination": None, "trunk": None}, "transport"
        )
        kind = transport.get("type")
        if kind == "sip" and fork_of is None:
            return self._outbound_sip(body, transport, headers)
        if kind != "webrtc":
            raise ProtocolError.invalid("transport.type", "transport.type must be 'webrtc'.")
        settings.check_keys(transport, {"type": None, "sdp": None}, "transport")
        offer = transport.get("sdp")
        if not isinstance(offer, str):
            raise ProtocolError.missing("transport.sdp")
        if fork_of is None:
            config = settings.check_start(body.get("session"), settings.MEDIA_START, self.emu.config.live_models)
            parent = None
        else:
            parent, problem = self.stored(fork_of)
            if problem is not None:
                raise ProtocolError(problem[1], code=problem[2], param="session_id")
            assert parent is not None
            assert parent.protocol.session is not None
            config = settings.fork_config(parent.protocol.session, body.get("session"), websocket=False)
        try:
            check_offer(offer)
        except OfferError as exc:
            raise ProtocolError(str(exc), code="invalid_offer", param="transport.sdp") from None
        session = self.new_session("webrtc")
        session.headers = headers
        session.forked_from = parent.id if parent is not None else None
        answer = await self._answer(session, offer)
        session.start(config)
        return {"session": {"id": session.id}, "transport": {"type": "webrtc", "sdp": answer}}

    async def _answer(self, session: LiveSession, offer: str) -> str:
        use_loopback_ice()

        def hang_up() -> None:
            session.end("remote_hangup")

        async def on_channel(transport: DataChannelTransport) -> None:
            await session.serve_primary(transport)

        peer = CallPeer(
            on_channel=on_channel, on_audio=session.feed_audio, input_rate=lambda: WEBRTC_RATE, hangup=hang_up
        )
        session.audio_output = peer.track
        session.on_end = lambda: self._close_peer(session.id)
        session.abort = lambda: self._close_peer(session.id)
        try:
            answer = await peer.answer(offer)
        except OfferError as exc:
            await peer.close()
            self.sessions.remove(session)
            raise ProtocolError(str(exc), code="invalid_offer", param="transport.sdp") from None
        self._peers[session.id] = peer
        return answer

    def _close_peer(self, session_id: str) -> None:
        peer = self._peers.pop(session_id, None)
        if peer is not None:
            task = asyncio.ensure_future(peer.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _outbound_sip(self, body: dict[str, Any], transport: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        trunk_shape = {
            "provider_url": None,
            "caller_number": None,
            "auth": {"type": None, "username": None, "password": None},
        }
        settings.check_keys(transport, {"type": None, "destination": None, "trunk": trunk_shape}, "transport")
        if not isinstance(transport.get("destination"), str) or not transport["destination"].startswith("+"):
            raise ProtocolError.invalid("transport.destination", "destination must be an E.164 number.")
        config = settings.check_start(body.get("session"), settings.SIP_OUTBOUND, self.emu.config.live_models)
        if str(transport["trunk"].get("provider_url", "")).endswith(ECHO_ERROR_HOST):  # test-only trigger
            auth = transport["trunk"].get("auth") or {}
            echoed = f"trunk refused {json.dumps(transport)} (auth {quote(str(auth.get('password', '')), safe='')})"
            raise ProtocolError.invalid("transport.trunk", echoed)
        session = self.new_session("sip")
        session.headers = headers
        session.protocol.outbound = True
        session.start(config)
        return {"session": {"id": session.id}, "transport": {"type": "sip"}}
