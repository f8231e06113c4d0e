"""The one HTTP client for the Realtime API's HTTP side: mint client secrets, place and hang up calls.

Every request carries voxgate's own key and the caller's `OpenAI-Safety-Identifier`
(`gateway.upstream.upstream_headers`, shared with the WebSocket relay). What upstream
answers becomes an OpenAI-shaped `GatewayError` by the same table as a refused WebSocket
handshake (`refusal_from_status`): its 429 keeps its `retry-after`, its 401/403 (voxgate's
key, never the tenant's) is a 502, its 5xx a retryable 503. A timeout, the pool's wait for
a connection included, is a retryable 503; an unreachable upstream a 502.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson

from gateway.errors import GatewayError
from gateway.settings import UpstreamSettings
from gateway.upstream import USER_AGENT, refusal_from_status, upstream_headers
from gateway.upstream_tls import http_client, unreachable
from gateway.webrtc.sdp import SDP_MEDIA_TYPE

log = logging.getLogger("voxgate.webrtc")

UPSTREAM_TIMEOUT_S: Final = 30.0
# One process's concurrent requests upstream; past it a request waits for a connection
# (at most UPSTREAM_TIMEOUT_S, then a 503), so a slow upstream cannot grow sockets without end.
MAX_CONNECTIONS: Final = 100
MAX_IDLE_CONNECTIONS: Final = 20
_CALL_ID: Final = re.compile(r"[A-Za-z0-9_\-.]{1,200}")


def is_call_id(candidate: str) -> bool:
    """True if `candidate` has the shape of an upstream call id (anything else is never looked up)."""
    return _CALL_ID.fullmatch(candidate) is not None


def call_id_from_location(location: str | None) -> str | None:
    """The last path segment of upstream's `Location` (relative or absolute)."""
    if not location:
        return None
    segment = urlsplit(location).path.rstrip("/").rpartition("/")[2]
    return segment if is_call_id(segment) else None


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """Upstream's answer to an offer: the SDP answer and the call's id."""

    call_id: str
    answer: bytes


class UpstreamHttp:
    """A bounded connection pool to the upstream's `/realtime/...` HTTP endpoints."""

    def __init__(
        self,
        settings: UpstreamSettings,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._settings = settings
        self._base = settings.url.rstrip("/")
        timeout = httpx.Timeout(timeout_s, connect=settings.connect_timeout_seconds)
        idle = min(max_connections, MAX_IDLE_CONNECTIONS)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=idle)
        # Verifies with the process's upstream context: system trust plus VOXGATE_UPSTREAM_CA_FILE.
        self._http = http_client(settings, timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT})

    async def mint_client_secret(self, body: Mapping[str, Any], safety_id: str) -> bytes:
        """Upstream's client-secret response body, as it came."""
        response = await self._post(
            "/realtime/client_secrets",
            safety_id,
            accept="application/json",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        return response.content

    async def create_call(self, sdp: str, session: Mapping[str, Any] | None, safety_id: str) -> PlacedCall:
        """Place a call: multipart with `session` when there is one, else the raw offer."""
        if session is not None:
            files = {
                "sdp": (None, sdp.encode("ascii"), SDP_MEDIA_TYPE),
                "session": (None, orjson.dumps(session), "application/json"),
            }
            response = await self._post("/realtime/calls", safety_id, accept=SDP_MEDIA_TYPE, files=files)
        else:
            response = await self._post(
                "/realtime/calls",
                safety_id,
                accept=SDP_MEDIA_TYPE,
                content=sdp.encode("ascii"),
                headers={"Content-Type": SDP_MEDIA_TYPE},
            )
        call_id = call_id_from_location(response.headers.get("location"))
        if call_id is None:
            raise GatewayError(502, "The upstream answered without a usable call id.", code="upstream_bad_response")
        return PlacedCall(call_id, response.content)

    async def hangup(self, call_id: str, safety_id: str) -> bool:
        """Hang a call up; True if upstream says it is (now or already) gone."""
        try:
            await self._post(f"/realtime/calls/{call_id}/hangup", safety_id, accept="*/*", content=b"")
        except GatewayError as error:
            if error.status == 404:
                return True
            log.warning("upstream hangup of %s failed: %s", call_id, error.message)
            return False
        return True

    async def send(
        self, method: str, path: str, safety_id: str, *, accept: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """Any other upstream request (GPT-Live, translation): JSON `body` or none; errors as `_post`'s."""
        content = orjson.dumps(body) if body is not None else b""
        headers = {"Content-Type": "application/json"}
        return await self._post(path, safety_id, accept=accept, headers=headers, content=content, method=method)

    async def post_sdp(self, path: str, sdp: str, safety_id: str, bearer: str) -> httpx.Response:
        """Post a raw SDP offer to `path` with `bearer` (an ephemeral key voxgate minted) in place of its own."""
        headers = {"Content-Type": SDP_MEDIA_TYPE, "Authorization": f"Bearer {bearer}"}
        return await self._post(path, safety_id, accept=SDP_MEDIA_TYPE, headers=headers, content=sdp.encode("ascii"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(
        self,
        path: str,
        safety_id: str,
        *,
        accept: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        files: Mapping[str, Any] | None = None,
        method: str = "POST",
    ) -> httpx.Response:
        """POST (or `method`) with voxgate's key; non-2xx answers and transport failures become GatewayErrors."""
        sent = {**upstream_headers(self._settings, safety_id, None), "Accept": accept, **(headers or {})}
        try:
            if method == "POST":
                response = await self._http.post(self._base + path, headers=sent, content=content, files=files)
            else:
                response = await self._http.request(method, self._base + path, headers=sent)
        except httpx.TimeoutException:
            raise GatewayError(
                503, "Timed out waiting for the upstream Realtime API.", code="upstream_timeout", retry_after=1.0
            ) from None
        except httpx.HTTPError as exc:  # the cause (certificate, name, refused, DNS…) in the message and log
            raise unreachable(exc) from None
        if response.status_code >= 300:
            error = refusal_from_status(response.status_code, dict(response.headers), response.content)
            if 400 <= error.status < 500 and error.status != 429 and error.param is None:
                error.param = _upstream_param(response.content)  # which field upstream disliked
            raise error
        return response


def _upstream_param(body: bytes) -> str | None:
    try:
        error = orjson.loads(body).get("error") or {}
        param = error.get("param")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return param if isinstance(param, str) else None
