"""GPT-Live session controls over HTTP: hangup, SIP accept/reject/refer, recording download.

An inbound SIP call is what a test creates with `emu.live.ring()` (the emulator has no
SIP trunk): a pending session that `accept` starts and `reject` ends.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get, post
from litestar.params import FromPath

from emulator.asgi import parse_json_object
from emulator.errors import ProtocolError
from emulator.http_replies import http_error, json_response
from emulator.live import settings
from emulator.live.connection import LiveSession

if TYPE_CHECKING:
    from emulator.live.endpoints import LiveEndpoints

PATH = "/v1/live/sessions/{session_id:str}"
# What a control does to a session, given the request body; a bad body raises ProtocolError.
Action = Callable[[LiveSession, dict[str, Any]], None]
RECORDING_RATE = 8_000


def wav_silence(seconds: float) -> bytes:
    """A mono 16-bit WAV of silence: the emulated recording of a stored session."""
    data = bytes(int(seconds * RECORDING_RATE) * 2)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        RECORDING_RATE,
        RECORDING_RATE * 2,
        2,
        16,
        b"data",
        len(data),
    )
    return header + data


def _headers(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def ring(live: LiveEndpoints) -> str:
    """An inbound SIP call waiting for accept or reject; returns its `live_…` session id."""
    return live.new_session("sip").id


def control_handlers(live: LiveEndpoints) -> list[Any]:
    """The Litestar handlers of the control endpoints, bound to `live`."""

    async def lookup(request: Request[Any, Any, Any], session_id: str) -> LiveSession | Response[bytes]:
        headers = _headers(request)
        if (refusal := await live.admit(headers, request.url.path)) is not None:
            return json_response(refusal.status, refusal.body, refusal.headers)
        session = live.find(session_id)
        if session is None:
            return http_error(404, f"Live session '{session_id}' not found.", code="not_found", param="session_id")
        return session

    async def control(
        request: Request[Any, Any, Any], session_id: str, act: Action, *, sip: str | None = None
    ) -> Response[bytes]:
        """Find the session, check its SIP state (`sip`: "ringing" or "accepted"), parse the body, act."""
        session = await lookup(request, session_id)
        if isinstance(session, Response):
            return session
        ringing = session.protocol.transport == "sip" and not session.protocol.started and not session.done.is_set()
        accepted = session.protocol.transport == "sip" and session.protocol.started
        if (sip == "ringing" and not ringing) or (sip == "accepted" and not accepted):
            return http_error(400, f"The session is not a {sip} SIP call.", code="invalid_request_error")
        body: dict[str, Any] | None = None
        if sip is not None:
            body = parse_json_object(await request.body())
            if body is None:
                return http_error(400, "The request body must be a JSON object.", code="invalid_json")
        try:
            act(session, body or {})
        except ProtocolError as exc:
            return http_error(400, exc.message, code=exc.code, param=exc.param)
        return Response(b"", status_code=200, media_type="application/octet-stream")

    def hang_up(session: LiveSession, body: dict[str, Any]) -> None:
        if not session.done.is_set():
            session.hung_up = True
            session.end("close_requested")

    def accept_call(session: LiveSession, body: dict[str, Any]) -> None:
        settings.check_keys(body, {"session": None}, "body")
        config = settings.check_start(body.get("session"), settings.SIP_ACCEPT, live.emu.config.live_models)
        session.start({k: v for k, v in config.items() if k != "type"})

    def reject_call(session: LiveSession, body: dict[str, Any]) -> None:
        status = settings.check_keys(body, {"status_code": None}, "body").get("status_code")
        if not isinstance(status, int) or not 300 <= status <= 699:
            raise ProtocolError.invalid("status_code", "status_code (300-699) is required.")
        session.rejected_with = status
        session.end("close_requested")

    def refer_call(session: LiveSession, body: dict[str, Any]) -> None:
        target = settings.check_keys(body, {"target_uri": None}, "body").get("target_uri")
        if not isinstance(target, str) or not target.startswith(("tel:", "sip:")):
            raise ProtocolError.invalid("target_uri", "target_uri must be a tel: or sip: URI.")
        session.referred_to = target
        session.end("close_requested")

    @post(PATH + "/hangup", status_code=200)
    async def hangup(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
        return await control(request, session_id, hang_up)

    @post(PATH + "/accept", status_code=200)
    async def accept(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
        return await control(request, session_id, accept_call, sip="ringing")

    @post(PATH + "/reject", status_code=200)
    async def reject(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
        return await control(request, session_id, reject_call, sip="ringing")

    @post(PATH + "/refer", status_code=200)
    async def refer(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
        return await control(request, session_id, refer_call, sip="accepted")

    @get(PATH + "/content", status_code=200)
    async def content(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[bytes]:
        session = await lookup(request, session_id)
        if isinstance(session, Response):
            return session
        resource = session.protocol.session
        if resource is None or not resource.get("store"):
            return http_error(404, f"Live session '{session_id}' has no stored content.", code="not_found")
        meter = session.protocol.meter
        seconds = sum(meter.seconds(time.time())) if meter is not None else 0
        return Response(wav_silence(seconds), status_code=200, media_type="application/octet-stream")

    return [hangup, accept, reject, refer, content]
