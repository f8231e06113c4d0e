"""The emulator's WebRTC HTTP surface: client secrets, calls (both forms), hangup, sidebands.

- `POST /v1/realtime/client_secrets` mints an `ek_…` key (standard key required);
- `POST /v1/realtime/calls` answers an SDP offer with a real aiortc peer: multipart
  (`sdp` + `session` parts) or raw `application/sdp`, with a standard or an `ek_` key;
- `POST /v1/realtime/calls/{call_id}/hangup` ends a call (standard key);
- `GET /v1/realtime?call_id=…` (WebSocket, standard key) attaches a `Sideband`.

What it remembers is `emulator.call_state`; its HTTP plumbing is `emulator.http_replies`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post
from litestar.params import FromPath

from emulator.app import REALTIME_PATH, send_json_error
from emulator.call_state import (
    DEFAULT_SECRET_SECONDS,
    EPHEMERAL_PREFIX,
    MAX_SECRET_SECONDS,
    MIN_SECRET_SECONDS,
    EmulatedCall,
    MintedSecret,
)
from emulator.connection import EmulatedSession
from emulator.errors import ProtocolError, http_error_body
from emulator.handshake import Refusal, decide, fault_refusal
from emulator.http_replies import (
    bearer_key,
    http_error,
    json_response,
    multipart_parts,
    part_text,
    refusal_response,
    request_headers_of,
)
from emulator.session import SessionProtocol
from emulator.sideband import Sideband
from emulator.webrtc import CallPeer, DataChannelTransport, OfferError, check_offer, use_loopback_ice

if TYPE_CHECKING:
    from emulator.emulator import RealtimeEmulator


class WebRtcEndpoints:
    """The state and routes of the WebRTC surface of one `RealtimeEmulator`."""

    def __init__(self, emulator: RealtimeEmulator) -> None:
        self.emu = emulator
        self.calls: list[EmulatedCall] = []
        self.client_secrets: list[MintedSecret] = []

    # --- keys ----------------------------------------------------------------------------

    def standard_key(self, headers: dict[str, str]) -> Response[bytes] | None:
        """None when the request carries the emulator's standard key, else the 401."""
        key = bearer_key(headers)
        if not key:
            return http_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        expected = self.emu.config.api_key
        if key.startswith(EPHEMERAL_PREFIX) or (expected is not None and key != expected):
            return http_error(401, f"Incorrect API key provided: {key[:6]}***.", code="invalid_api_key")
        return None

    def secret(self, key: str | None) -> MintedSecret | None:
        """The minted secret `key` names, if it is one and has not expired."""
        if not key or not key.startswith(EPHEMERAL_PREFIX):
            return None
        now = time.time()
        return next((s for s in self.client_secrets if s.value == key and s.valid(now)), None)

    def websocket_secret(self, headers: dict[str, str]) -> MintedSecret | Refusal | None:
        """For a WebSocket handshake: the ek it uses, a 401 for a dead ek, or None (not an ek)."""
        key = bearer_key(headers)
        if not key or not key.startswith(EPHEMERAL_PREFIX):
            return None
        minted = self.secret(key)
        if minted is None:
            body = http_error_body(
                "The ephemeral key is invalid or has expired.", type="invalid_request_error", code="invalid_api_key"
            )
            return Refusal(401, body)
        return minted

    async def fault_refusal(self, path: str, headers: dict[str, str]) -> Response[bytes] | None:
        faults = self.emu.faults
        if faults.connect_delay_s > 0:
            await asyncio.sleep(faults.connect_delay_s)
        if faults.connect_status is None:
            return None
        refusal = fault_refusal(faults.connect_status, faults)
        self.emu.refused.append({"status": refusal.status, "headers": headers, "query": {}, "path": path})
        return refusal_response(refusal)

    # --- sessions ------------------------------------------------------------------------

    def new_protocol(
        self, configs: list[dict[str, Any]], *, session_id: str | None = None, webrtc: bool = False
    ) -> SessionProtocol:
        """A session built from the defaults and `configs` applied in order (may raise ProtocolError)."""
        configs = [c for c in configs if c]
        kind = next((c.get("type") for c in configs if c.get("type")), "realtime")
        model = next((c["model"] for c in reversed(configs) if isinstance(c.get("model"), str)), None)
        if kind not in ("realtime", "transcription"):
            raise ProtocolError.invalid("session.type", f"Invalid value: '{kind}'.")
        protocol = SessionProtocol(
            config=self.emu.config,
            rate_limits=self.emu.rate_limits,
            now=time.time(),
            model=model if kind == "realtime" else None,
            intent=kind,
            session_id=session_id,
            webrtc=webrtc,
        )
        for config in configs:
            protocol.configure(config)
        return protocol

    # --- routes --------------------------------------------------------------------------

    def route_handlers(self) -> list[Any]:
        @post(f"{REALTIME_PATH}/client_secrets", status_code=200)
        async def client_secrets(request: Request[Any, Any, Any]) -> Response[bytes]:
            return await self.mint(request)

        @post(f"{REALTIME_PATH}/calls", status_code=201)
        async def calls(request: Request[Any, Any, Any]) -> Response[bytes]:
            return await self.create_call(request)

        @post(f"{REALTIME_PATH}/calls/{{call_id:str}}/hangup", status_code=200)
        async def hangup(request: Request[Any, Any, Any], call_id: FromPath[str]) -> Response[bytes]:
            return await self.hangup(request, call_id)

        return [client_secrets, calls, hangup]

    async def mint(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = request_headers_of(request)
        if (refused := await self.fault_refusal(request.url.path, headers)) is not None:
            return refused
        if (refused := self.standard_key(headers)) is not None:
            return refused
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return http_error(400, "We could not parse the JSON body of your request.", code="invalid_json")
        if not isinstance(body, dict):
            return http_error(400, "The request body must be a JSON object.", code="invalid_json")
        unknown = next((k for k in body if k not in ("expires_after", "session")), None)
        if unknown is not None:
            return http_error(400, f"Unknown parameter: '{unknown}'.", code="unknown_parameter", param=unknown)
        seconds = DEFAULT_SECRET_SECONDS
        expires_after = body.get("expires_after")
        if expires_after is not None:
            if not isinstance(expires_after, dict) or expires_after.get("anchor", "created_at") != "created_at":
                return http_error(400, "Invalid 'expires_after'.", code="invalid_value", param="expires_after")
            seconds = expires_after.get("seconds", DEFAULT_SECRET_SECONDS)
            if not isinstance(seconds, int) or not MIN_SECRET_SECONDS <= seconds <= MAX_SECRET_SECONDS:
                return http_error(
                    400,
                    f"Invalid 'expires_after.seconds': must be between {MIN_SECRET_SECONDS} and {MAX_SECRET_SECONDS}.",
                    code="invalid_value",
                    param="expires_after.seconds",
                )
        config = body.get("session")
        if config is not None and not isinstance(config, dict):
            return http_error(400, "Invalid 'session': expected an object.", code="invalid_value", param="session")
        try:
            protocol = self.new_protocol([config] if config else [])
        except ProtocolError as exc:
            return http_error(400, exc.message, code=exc.code, param=exc.param)
        minted = MintedSecret(
            value=EPHEMERAL_PREFIX + secrets.token_hex(16),
            expires_at=int(time.time()) + seconds,
            request=body,
            session=protocol.session,
            headers=headers,
        )
        self.client_secrets.append(minted)
        return json_response(200, {"value": minted.value, "expires_at": minted.expires_at, "session": minted.session})

    async def create_call(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = request_headers_of(request)
        if (refused := await self.fault_refusal(request.url.path, headers)) is not None:
            return refused
        minted = self.secret(bearer_key(headers))
        if minted is None and (refused := self.standard_key(headers)) is not None:
            return refused
        content_type = headers.get("content-type", "")
        raw = await request.body()
        configs: list[dict[str, Any]] = [minted.request["session"]] if minted and minted.request.get("session") else []
        if content_type.startswith("multipart/form-data"):
            form = "multipart"
            parts = multipart_parts(content_type, raw)
            if "sdp" not in parts:
                return http_error(
                    400, "Missing required parameter: 'sdp'.", code="missing_required_parameter", param="sdp"
                )
            offer = part_text(parts["sdp"])
            if "session" in parts:
                try:
                    config = json.loads(part_text(parts["session"]))
                except ValueError:
                    return http_error(400, "Invalid 'session': not valid JSON.", code="invalid_json", param="session")
                if not isinstance(config, dict):
                    return http_error(
                        400, "Invalid 'session': expected an object.", code="invalid_value", param="session"
                    )
                configs.append(config)
        elif content_type.split(";")[0].strip() == "application/sdp":
            form = "sdp"
            offer = raw.decode(errors="replace")
        else:
            return http_error(
                400,
                "Send the SDP offer as application/sdp, or as multipart/form-data with 'sdp' and 'session' parts.",
                code="invalid_value",
                param="content-type",
            )
        try:
            check_offer(offer)
            protocol = self.new_protocol(configs, session_id=minted.session["id"] if minted else None, webrtc=True)
        except OfferError as exc:
            return http_error(400, str(exc), code="invalid_offer", param="sdp")
        except ProtocolError as exc:
            return http_error(400, exc.message, code=exc.code, param=exc.param)
        return await self._answer(protocol, offer, form, minted, headers)

    async def _answer(
        self, protocol: SessionProtocol, offer: str, form: str, minted: MintedSecret | None, headers: dict[str, str]
    ) -> Response[bytes]:
        use_loopback_ice()
        holder: list[EmulatedCall] = []

        def end() -> None:
            if holder:
                self.schedule_end(holder[0])

        async def on_channel(transport: DataChannelTransport) -> None:
            self.emu.sessions.append(session)
            await session.serve(transport)
            end()

        peer = CallPeer(
            on_channel=on_channel,
            on_audio=lambda pcm: session.feed_audio(pcm),
            input_rate=lambda: protocol.buffer.format.rate,
            hangup=end,
        )
        session = EmulatedSession(
            protocol,
            headers=headers,
            query={},
            config=self.emu.config,
            faults=lambda: self.emu.faults,
            abort=end,
            audio_output=peer.track,
        )
        call = EmulatedCall(
            call_id="rtc_" + uuid.uuid4().hex,
            session=session,
            form=form,
            ephemeral_key=minted.value if minted else None,
            headers=headers,
            offer=offer,
            peer=peer,
        )
        holder.append(call)
        try:
            call.answer = await peer.answer(offer)
        except OfferError as exc:
            await peer.close()
            return http_error(400, str(exc), code="invalid_offer", param="sdp")
        self.calls.append(call)
        return Response(
            call.answer.encode(),
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"{REALTIME_PATH}/calls/{call.call_id}"},
        )

    async def hangup(self, request: Request[Any, Any, Any], call_id: str) -> Response[bytes]:
        headers = request_headers_of(request)
        if (refused := self.standard_key(headers)) is not None:
            return refused
        call = self.find(call_id)
        if call is None:
            return http_error(404, f"Call '{call_id}' not found.", code="not_found", param="call_id")
        call.hung_up = True
        await self.end(call)
        return Response(b"", status_code=200, media_type="application/octet-stream")

    # --- ending ----------------------------------------------------------------------------

    def find(self, call_id: str) -> EmulatedCall | None:
        return next((c for c in self.calls if c.call_id == call_id and not c.ended), None)

    def schedule_end(self, call: EmulatedCall) -> None:
        if call._ending is None:
            call._ending = asyncio.ensure_future(self._end(call))

    async def end(self, call: EmulatedCall) -> None:
        self.schedule_end(call)
        assert call._ending is not None
        await asyncio.shield(call._ending)

    async def _end(self, call: EmulatedCall) -> None:
        call.ended = True
        if call.peer is not None:
            await call.peer.close()
        if call.session.serving:
            await call.session.wait_closed(5.0)
        else:
            call.session.closed = True
        for sideband in call.sidebands:
            sideband.close(1000, "call ended")
        await asyncio.gather(*(s.wait_closed(2.0) for s in call.sidebands))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(c) for c in self.calls if not c.ended))

    # --- sideband --------------------------------------------------------------------------

    async def serve_sideband(self, headers: dict[str, str], query: dict[str, str], receive: Any, send: Any) -> None:
        """A `?call_id=` handshake: refuse it like any handshake, 404 an unknown call, else attach."""
        rest = {k: v for k, v in query.items() if k != "call_id"}
        decision = decide(headers, rest, self.emu.config, self.emu.faults)
        if isinstance(decision, Refusal):
            self.emu.refused.append({"status": decision.status, "headers": headers, "query": query})
            await send_json_error(send, decision.status, decision.body, decision.headers, websocket=True)
            return
        call = self.find(query["call_id"])
        if call is None or (bearer_key(headers) or "").startswith(EPHEMERAL_PREFIX):
            status = 404 if call is None else 401
            message = f"Call '{query['call_id']}' not found." if call is None else "A sideband needs a standard key."
            body = http_error_body(
                message,
                type="invalid_request_error",
                code="not_found" if call is None else "invalid_api_key",
                param="call_id" if call is None else None,
            )
            self.emu.refused.append({"status": status, "headers": headers, "query": query})
            await send_json_error(send, status, body, [], websocket=True)
            return
        sideband = Sideband(call.session, headers=headers, query=query)
        call.sidebands.append(sideband)
        await send({"type": "websocket.accept", "subprotocol": decision.subprotocol, "headers": []})
        await sideband.run(receive, send)
