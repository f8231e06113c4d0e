"""The emulator's Realtime translation surface.

- `GET /v1/realtime/translations?model=gpt-realtime-translate` (upgrade): a session; the
  server speaks first (`session.created`); a standard key or a translation `ek_` key;
- `POST /v1/realtime/translations/client_secrets`: mints an `ek_` key for a translation session;
- `POST /v1/realtime/translations/calls` (`application/sdp`, usually with that `ek_` key):
  answers an SDP offer (201, `Location: /v1/realtime/translations/calls/{call_id}`); events on
  the `oai-events` data channel, audio both ways on the track;
- `POST /v1/realtime/translations/calls/{call_id}/hangup` (standard key): flushes the session
  (`session.closed` on the data channel) and ends the call. OpenAI documents neither the
  `Location` nor a hangup for translation calls; the emulator follows Realtime calls' forms.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, asgi, post
from litestar.params import FromPath

from emulator.app import send_json_error
from emulator.asgi import parse_json_object
from emulator.call_state import (
    DEFAULT_SECRET_SECONDS,
    EPHEMERAL_PREFIX,
    MAX_SECRET_SECONDS,
    MIN_SECRET_SECONDS,
    MintedSecret,
)
from emulator.connection import AsgiWebSocket, Transport
from emulator.errors import ProtocolError, http_error_body, new_id
from emulator.handshake import Refusal, decide, request_headers, request_query
from emulator.http_replies import bearer_key, http_error, json_response
from emulator.live.connection import SESSION_CLOSED_CODE, Outlet
from emulator.translation.protocol import TranslationProtocol, translation_session
from emulator.webrtc import CallPeer, DataChannelTransport, OfferError, check_offer, use_loopback_ice

if TYPE_CHECKING:
    from emulator.emulator import RealtimeEmulator

PATH = "/v1/realtime/translations"
TRACK_INPUT_RATE = 24_000


@dataclass(eq=False)
class TranslationSession:
    """One translation session as tests see it (`outlet.server_events`: what was sent)."""

    protocol: TranslationProtocol
    headers: dict[str, str]
    query: dict[str, str]
    transport: str  # "websocket" | "webrtc"
    outlet: Outlet | None = None
    peer: CallPeer | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    call_id: str | None = None  # a WebRTC call's id (its `Location`)
    hung_up: bool = False  # ended by `POST …/calls/{call_id}/hangup`

    @property
    def id(self) -> str:
        return self.protocol.id

    @property
    def server_events(self) -> list[dict[str, Any]]:
        return self.outlet.server_events if self.outlet is not None else []

    def send(self, events: list[dict[str, Any]]) -> None:
        assert self.outlet is not None
        for event in events:
            self.outlet.send(event)
        if self.peer is not None and self.protocol.playback_ms:
            self.peer.track.play(self.protocol.playback_ms)
            self.protocol.playback_ms = 0
        if self.protocol.closed:
            self.outlet.close(SESSION_CLOSED_CODE)

    async def serve(self, transport: Transport, latency: Any, max_seconds: float) -> None:
        self.outlet = Outlet(transport, latency)
        self.send(self.protocol.open())
        expiry = asyncio.get_running_loop().call_later(max_seconds, lambda: self.send(self.protocol.close()))
        try:
            while (message := await transport.receive()) is not None:
                if isinstance(message, str):
                    self.send(self.protocol.receive_text(message))
        finally:
            expiry.cancel()
            self.protocol.closed = True
            await self.outlet.drain(2.0)
            self.done.set()


class TranslationEndpoints:
    """The state and routes of the translation surface of one `RealtimeEmulator`."""

    def __init__(self, emulator: RealtimeEmulator) -> None:
        self.emu = emulator
        self.sessions: list[TranslationSession] = []
        self.client_secrets: list[MintedSecret] = []
        self.refused: list[dict[str, Any]] = []

    def _secret(self, headers: dict[str, str]) -> MintedSecret | None:
        key = bearer_key(headers) or ""
        now = time.time()
        return next((s for s in self.client_secrets if s.value == key and s.valid(now)), None)

    def _new_session(self, model: str, config: Any) -> dict[str, Any]:
        expires_at = int(time.time() + self.emu.config.max_session_seconds)
        return translation_session(new_id("sess"), model, expires_at, config)

    async def close_all(self) -> None:
        for session in self.sessions:
            if session.outlet is not None and not session.done.is_set():
                session.send(session.protocol.close())
        await asyncio.gather(*(s.peer.close() for s in self.sessions if s.peer is not None), return_exceptions=True)

    def route_handlers(self) -> list[Any]:
        @asgi(PATH, copy_scope=True)
        async def translations(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                body = http_error_body("Use a WebSocket upgrade on this path.", type="invalid_request_error", code=None)
                await send_json_error(send, 405, body, [], websocket=False)
                return
            await self.serve_websocket(scope, receive, send)

        @post(PATH + "/client_secrets", status_code=200)
        async def client_secrets(request: Request[Any, Any, Any]) -> Response[bytes]:
            return await self.mint(request)

        @post(PATH + "/calls", status_code=201)
        async def calls(request: Request[Any, Any, Any]) -> Response[bytes]:
            return await self.call(request)

        @post(PATH + "/calls/{call_id:str}/hangup", status_code=200)
        async def hangup(request: Request[Any, Any, Any], call_id: FromPath[str]) -> Response[bytes]:
            return await self.hangup(request, call_id)

        return [translations, client_secrets, calls, hangup]

    async def serve_websocket(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers, query = request_headers(scope), request_query(scope)
        secret = self._secret(headers)
        refusal = self._admit(headers, query, secret)
        if refusal is not None:
            self.refused.append({"status": refusal.status, "headers": headers, "query": query})
            await send_json_error(send, refusal.status, refusal.body, refusal.headers, websocket=True)
            return
        model = query["model"]
        config = secret.request.get("session") if secret is not None else None
        resource = secret.session if secret is not None else self._new_session(model, config)
        session = TranslationSession(TranslationProtocol(resource), headers, query, "websocket")
        self.sessions.append(session)
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        await session.serve(
            AsgiWebSocket(receive, send), lambda: self.emu.faults.event_latency_ms, self.emu.config.max_session_seconds
        )

    def _admit(self, headers: dict[str, str], query: dict[str, str], secret: MintedSecret | None) -> Refusal | None:
        rest = {k: v for k, v in query.items() if k != "model"}
        decision = decide(headers, rest, self.emu.config, self.emu.faults)
        key = bearer_key(headers) or ""
        if isinstance(decision, Refusal) and not (secret is not None and decision.status == 401):
            return decision
        if key.startswith(EPHEMERAL_PREFIX) and secret is None:
            body = http_error_body(
                "The ephemeral key is invalid or has expired.", type="invalid_request_error", code="invalid_api_key"
            )
            return Refusal(401, body)
        model = query.get("model")
        if not model:
            body = http_error_body(
                "Missing required parameter: 'model'.",
                type="invalid_request_error",
                code="missing_required_parameter",
                param="model",
            )
            return Refusal(400, body)
        if model not in self.emu.config.translation_models:
            message = f"The model '{model}' does not exist or you do not have access to it."
            return Refusal(400, http_error_body(message, type="invalid_request_error", code="model_not_found"))
        return None

    async def mint(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if (refused := await self.emu.webrtc.fault_refusal(request.url.path, headers)) is not None:
            return refused
        if (refused := self.emu.webrtc.standard_key(headers)) is not None:
            return refused
        body = parse_json_object(await request.body())
        if body is None or set(body) - {"session", "expires_after"}:
            return http_error(
                400, "The body must be an object with 'session' and 'expires_after'.", code="invalid_value"
            )
        seconds = (body.get("expires_after") or {}).get("seconds", DEFAULT_SECRET_SECONDS)
        if not isinstance(seconds, int) or not MIN_SECRET_SECONDS <= seconds <= MAX_SECRET_SECONDS:
            return http_error(
                400, "Invalid 'expires_after.seconds'.", code="invalid_value", param="expires_after.seconds"
            )
        config = dict(body.get("session") or {})
        model = config.pop("model", None)
        if model not in self.emu.config.translation_models:
            return http_error(400, f"Invalid 'session.model': '{model}'.", code="invalid_value", param="session.model")
        try:
            resource = self._new_session(str(model), config)
        except ProtocolError as exc:
            return http_error(400, exc.message, code=exc.code, param=exc.param)
        secret = MintedSecret(
            EPHEMERAL_PREFIX + secrets.token_hex(16), int(time.time()) + seconds, body, resource, headers
        )
        self.client_secrets.append(secret)
        return json_response(200, {"value": secret.value, "expires_at": secret.expires_at, "session": resource})

    async def call(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = self._secret(headers)
        if secret is None and (refused := self.emu.webrtc.standard_key(headers)) is not None:
            return refused
        if headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
            return http_error(400, "Send the SDP offer as application/sdp.", code="invalid_value", param="content-type")
        offer = (await request.body()).decode(errors="replace")
        try:
            check_offer(offer)
        except OfferError as exc:
            return http_error(400, str(exc), code="invalid_offer", param="sdp")
        model = self.emu.config.translation_models[0]
        resource = secret.session if secret is not None else self._new_session(model, None)
        session = TranslationSession(TranslationProtocol(resource, media_track=True), headers, {}, "webrtc")
        session.call_id = new_id("rtc")
        use_loopback_ice()

        async def on_channel(transport: DataChannelTransport) -> None:
            await session.serve(
                transport, lambda: self.emu.faults.event_latency_ms, self.emu.config.max_session_seconds
            )

        def on_audio(pcm: bytes) -> None:
            if session.outlet is not None:
                session.send(session.protocol.receive_audio(pcm))

        session.peer = CallPeer(
            on_channel=on_channel, on_audio=on_audio, input_rate=lambda: TRACK_INPUT_RATE, hangup=lambda: None
        )
        try:
            answer = await session.peer.answer(offer)
        except OfferError as exc:
            await session.peer.close()
            return http_error(400, str(exc), code="invalid_offer", param="sdp")
        self.sessions.append(session)
        location = f"{PATH}/calls/{session.call_id}"
        return Response(answer.encode(), status_code=201, media_type="application/sdp", headers={"Location": location})

    def find_call(self, call_id: str) -> TranslationSession | None:
        return next((s for s in self.sessions if s.call_id == call_id), None)

    async def hangup(self, request: Request[Any, Any, Any], call_id: str) -> Response[bytes]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if (refused := await self.emu.webrtc.fault_refusal(request.url.path, headers)) is not None:
            return refused
        if (refused := self.emu.webrtc.standard_key(headers)) is not None:
            return refused
        session = self.find_call(call_id)
        if session is None or session.hung_up or session.protocol.closed:
            return http_error(404, f"Call '{call_id}' not found.", code="not_found", param="call_id")
        session.hung_up = True
        if session.outlet is not None:
            session.send(session.protocol.close())  # flushes, then `session.closed`
            await session.outlet.drain(2.0)
        session.protocol.closed = True
        if session.peer is not None:
            await session.peer.close()
        return Response(b"", status_code=200, media_type="application/octet-stream")
