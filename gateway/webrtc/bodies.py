"""Request bodies of the WebRTC routes: read within a bound, then parsed strictly.

A body is refused (413) as soon as its declared or streamed size passes the route's limit,
before it is buffered whole. The limits are docs/webrtc.md's: an SDP offer at most 64 KiB,
a JSON body or session part at most 1 MiB, a multipart offer both together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson
from litestar import Request

from gateway.errors import GatewayError
from gateway.webrtc.multipart import parse_multipart
from gateway.webrtc.sdp import MAX_SDP_BYTES, SDP_MEDIA_TYPE, sdp_too_large, validate_sdp

MAX_JSON_BYTES: Final = 1024 * 1024  # client_secrets bodies and multipart session parts
MAX_MULTIPART_BYTES: Final = MAX_SDP_BYTES + MAX_JSON_BYTES
MULTIPART_MEDIA_TYPE: Final = "multipart/form-data"


def bad_request(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def request_too_large(message: str = "The request body is too large.", param: str | None = None) -> GatewayError:
    return GatewayError(413, message, code="request_too_large", param=param)


async def read_body(request: Request[Any, Any, Any], limit: int, too_large: GatewayError) -> bytes:
    """The whole body, or `too_large` once more than `limit` bytes are declared or have arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """`raw` as a JSON object (empty is `{}`); else a 400 `invalid_json` naming `what`."""
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise bad_request(f"The {what} is not valid JSON.", "invalid_json", what) from None
    if not isinstance(value, dict):
        raise bad_request(f"The {what} must be a JSON object.", "invalid_json", what)
    return value


async def read_json_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A JSON object body of at most `MAX_JSON_BYTES`."""
    return json_object(await read_body(request, MAX_JSON_BYTES, request_too_large()), "body")


@dataclass(frozen=True, slots=True)
class Offer:
    """An SDP offer as the client sent it, with the session config of a multipart offer."""

    sdp: str
    session: dict[str, Any] | None = None


def offer_media_type(request: Request[Any, Any, Any]) -> str:
    """`application/sdp` (a raw offer) or `multipart/form-data` (sdp + session); else a 415."""
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media not in (SDP_MEDIA_TYPE, MULTIPART_MEDIA_TYPE):
        raise GatewayError(
            415,
            "Send the offer as 'application/sdp' or 'multipart/form-data' (sdp + session).",
            code="unsupported_content_type",
        )
    return media


def with_query_model(offer: Offer, model: str | None) -> Offer:
    """The offer with `?model=` (as browser snippets post a raw offer) as its session's model, so
    it is policed and upstream runs it; a multipart session naming another model is a 400."""
    if model is None:
        return offer
    if not model:
        raise bad_request("'model' must be a non-empty string.", "invalid_value", "model")
    session = offer.session if offer.session is not None else {"type": "realtime"}
    if session.get("model", model) != model:
        raise bad_request("The query's 'model' and 'session.model' name different models.", "invalid_value", "model")
    return Offer(offer.sdp, {**session, "model": model})


async def read_offer(request: Request[Any, Any, Any], media: str) -> Offer:
    """The offer of a `POST /v1/realtime/calls` whose media type `offer_media_type` accepted."""
    if media == SDP_MEDIA_TYPE:
        return Offer(validate_sdp(await read_body(request, MAX_SDP_BYTES, sdp_too_large())))
    content_type = (request.headers.get("content-type") or "").strip()
    parts = parse_multipart(await read_body(request, MAX_MULTIPART_BYTES, request_too_large()), content_type)
    if "sdp" not in parts:
        raise bad_request("The multipart body has no 'sdp' part.", "missing_required_parameter", "sdp")
    sdp = validate_sdp(parts["sdp"])
    if "session" not in parts:
        return Offer(sdp)
    if len(parts["session"]) > MAX_JSON_BYTES:
        raise request_too_large("The session part is too large.", "session")
    return Offer(sdp, json_object(parts["session"], "session"))
