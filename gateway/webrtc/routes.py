"""The Realtime API's HTTP side: client secrets, the WebRTC SDP broker, call control, attach.

Routes (docs/webrtc.md):

* ``POST /v1/realtime/client_secrets``: mint an ephemeral key upstream, tenant API key only.
* ``POST /v1/realtime/calls``: broker an SDP offer (multipart with a session, or raw
  ``application/sdp``; a raw offer may come from a browser with a tenant-signed JWT).
* ``GET /v1/realtime/calls/{call_id}`` and ``POST …/{call_id}/hangup``: the tenant's own
  calls only; any other call id is a 404.
* ``POST /v1/voxgate/calls/{call_id}/attach``: a tenant backend hands voxgate a call its
  browser opened directly with a secret voxgate minted.

Every session config is policed with `policies.clamp.police_client_event` (wrapped as a
``session.update``), and admission is the same `Enforcement.admit` the WebSocket path
uses. After a call is brokered or attached, ``services.calls_monitor.attach(call)`` runs
when the process has a monitor (the sideband; not built here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import orjson
from litestar import Request, Response, get, post
from litestar.config.app import AppConfig
from litestar.params import FromPath
from websockets.exceptions import ConnectionClosed

from gateway.auth.apikeys import looks_like_api_key
from gateway.auth.browser import BrowserAuthStore, BrowserPrincipal, BrowserTokenVerifier, browser_tokens_unsupported
from gateway.auth.credentials import END_USER_HEADER, end_user_from_header, key_safety_identifier, safety_identifier
from gateway.errors import GatewayError, invalid_api_key, missing_api_key
from gateway.ids import new_id
from gateway.ledger.writer import SessionEnded, SessionStarted
from gateway.services import GatewayServices
from gateway.session.admission import draining_error
from gateway.upstream import USER_AGENT, open_upstream, refusal_from_status, upstream_headers
from gateway.webrtc.calls_store import Call, CallStore, MintedSecret
from policies.actions import SessionInfoRecord
from policies.clamp import Refused, Rewritten, police_client_event
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.ratelimit import TokenBucket, take

log = logging.getLogger("voxgate.realtime_http")

MAX_SDP_BYTES: Final = 64 * 1024
MAX_JSON_BYTES: Final = 1024 * 1024  # client_secrets bodies and multipart session parts
MAX_MULTIPART_BYTES: Final = MAX_SDP_BYTES + MAX_JSON_BYTES
DEFAULT_MODEL: Final = "gpt-realtime"
UPSTREAM_TIMEOUT_S: Final = 30.0
PROBE_TIMEOUT_S: Final = 5.0
UPSTREAM_SECRET_SECONDS: Final = 600  # upstream's default client-secret lifetime
TAGS: Final = ["realtime", "webrtc"]
CallId = FromPath[str]
_SDP_LINE = re.compile(r"[a-z]=[\x20-\x7e\t]*")
_CALL_ID = re.compile(r"[A-Za-z0-9_\-.]{1,200}")
# Attach attempts per tenant and process: each may cost an upstream sideband handshake.
ATTACH_BURST: Final = 10
ATTACH_PER_SECOND: Final = 0.5
MAX_ATTACH_BUCKETS: Final = 10_000


# -- errors --------------------------------------------------------------------------------


def call_not_found(call_id: str) -> GatewayError:
    # The same answer for an unknown call and for another tenant's call.
    return GatewayError(404, f"No call found with id '{call_id}'.", code="call_not_found", param="call_id")


def invalid_sdp(message: str) -> GatewayError:
    return GatewayError(400, f"Invalid SDP offer: {message}", code="invalid_sdp", param="sdp")


def _bad_request(message: str, code: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


# -- per-process state ---------------------------------------------------------------------


class RealtimeHttp:
    """What the routes share in one process: the upstream HTTP client, calls, token verifier."""

    def __init__(self, services: GatewayServices) -> None:
        self.services = services
        settings = services.settings
        self.calls = CallStore(services.pool, services.redis, settings.redis.key_prefix)
        self.browser_auth = BrowserAuthStore(services.pool)
        self.browser_tokens = self.new_token_verifier()
        timeout = httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=settings.upstream.connect_timeout_seconds)
        self.http = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": USER_AGENT})
        self._attach_buckets: dict[str, TokenBucket] = {}

    def take_attach_attempt(self, tenant_id: str, now: float) -> None:
        """Count one attach attempt against the tenant's bucket (in this process); 429 when empty."""
        bucket = self._attach_buckets.get(tenant_id) or TokenBucket.full(ATTACH_BURST, ATTACH_PER_SECOND, now)
        allowed, after, retry_after = take(bucket, now)
        if len(self._attach_buckets) >= MAX_ATTACH_BUCKETS and tenant_id not in self._attach_buckets:
            self._attach_buckets.clear()  # bounded: a full bucket is what a forgotten tenant starts with again
        self._attach_buckets[tenant_id] = after
        if not allowed:
            raise GatewayError(
                429,
                f"Too many attach attempts; at most {ATTACH_BURST} at once and "
                f"{ATTACH_PER_SECOND:g} per second per tenant.",
                code="rate_limit_exceeded",
                retry_after=retry_after,
            )

    def new_token_verifier(self) -> BrowserTokenVerifier:
        """A browser-token verifier with empty caches (JWKS fetches checked per VOXGATE_JWKS_ALLOWED_HOSTS)."""
        allowed = self.services.settings.security.jwks_allowed_hosts
        return BrowserTokenVerifier(self.browser_auth, jwks_allowed_hosts=allowed)

    def upstream_url(self, path: str) -> str:
        return self.services.settings.upstream.url.rstrip("/") + path

    async def close(self) -> None:
        await self.http.aclose()


def browser_keys_changed(app_state: Any) -> None:
    """A tenant's browser-token keys changed through this process: drop every cached key now
    (other replicas follow within `CONFIG_CACHE_SECONDS`)."""
    state = getattr(app_state, "realtime_http", None)
    if isinstance(state, RealtimeHttp):
        state.browser_tokens = state.new_token_verifier()


def _state(request: Request[Any, Any, Any]) -> RealtimeHttp:
    state = getattr(request.app.state, "realtime_http", None)
    if state is None:
        state = RealtimeHttp(request.app.state.services)
        request.app.state.realtime_http = state
    assert isinstance(state, RealtimeHttp)
    return state


# -- who is calling ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    api_key_id: str | None  # None for a browser token
    via: Literal["api_key", "browser_token"]
    safety_id: str
    browser: BrowserPrincipal | None = None


def _bearer(request: Request[Any, Any, Any]) -> str:
    scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise missing_api_key()
    return token


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


async def authenticate(request: Request[Any, Any, Any], state: RealtimeHttp, *, allow_browser: bool) -> Caller:
    """A tenant API key (any route) or a browser JWT (where `allow_browser`); else a 401/403."""
    services = state.services
    token = _bearer(request)
    secret = services.settings.security.safety_identifier_secret
    if _looks_like_jwt(token) and not looks_like_api_key(token):
        if not allow_browser:
            raise browser_tokens_unsupported()
        principal = await state.browser_tokens.verify(token)
        return Caller(
            principal.tenant_id,
            None,
            "browser_token",
            safety_identifier(secret, principal.tenant_id, principal.subject),
            principal,
        )
    identity = await services.tenants.authenticate(token)
    if identity is None:
        raise invalid_api_key()
    raw_end_user = next((v for k, v in request.scope["headers"] if k.lower() == END_USER_HEADER.encode()), b"")
    end_user = end_user_from_header(raw_end_user)  # UTF-8, as on the WebSocket path
    safety_id = (
        safety_identifier(secret, identity.tenant_id, end_user)
        if end_user
        else key_safety_identifier(secret, identity.tenant_id, identity.key_id)
    )
    return Caller(identity.tenant_id, identity.key_id, "api_key", safety_id)


def _may_see(caller: Caller, call: Call) -> bool:
    """A tenant key sees all of its tenant's calls; a browser token only its own user's calls."""
    if call.tenant_id != caller.tenant_id:
        return False
    return caller.via == "api_key" or (bool(call.safety_id) and call.safety_id == caller.safety_id)


# -- bodies --------------------------------------------------------------------------------


async def _read_body(request: Request[Any, Any, Any], limit: int, too_large: GatewayError) -> bytes:
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


def _header_params(name: str, value: str) -> Message:
    message = Message()
    message[name] = value
    return message


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The named parts of a `multipart/form-data` body (first of each name wins)."""
    boundary = _header_params("content-type", content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise _bad_request("The multipart body has no boundary.", "invalid_multipart")
    delimiter = b"--" + boundary.encode("latin-1")
    sections = body.split(delimiter)
    if len(sections) < 3:
        raise _bad_request("The multipart body has no parts.", "invalid_multipart")
    parts: dict[str, bytes] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):
            break
        section = section[2:] if section.startswith(b"\r\n") else section.removeprefix(b"\n")
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = section.partition(b"\n\n")
        if not sep:
            raise _bad_request("A multipart part has no header block.", "invalid_multipart")
        content = content.removesuffix(b"\r\n") if content.endswith(b"\r\n") else content.removesuffix(b"\n")
        name = None
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = _header_params("content-disposition", value.strip())
                param = disposition.get_param("name", header="content-disposition")
                name = param if isinstance(param, str) else None
        if name is not None and name not in parts:
            parts[name] = content
    return parts


def validate_sdp(raw: bytes) -> str:
    """The offer as text if it is a plausible SDP session description; else 413/400."""
    if len(raw) > MAX_SDP_BYTES:
        raise GatewayError(
            413, f"The SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB.", code="sdp_too_large", param="sdp"
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise invalid_sdp("it must be ASCII text.") from None
    lines = [line.removesuffix("\r") for line in text.rstrip("\r\n").split("\n")]
    if not lines or lines[0] != "v=0":
        raise invalid_sdp("it must start with 'v=0'.")
    for number, line in enumerate(lines, 1):
        if not _SDP_LINE.fullmatch(line):
            raise invalid_sdp(f"line {number} is not a '<type>=<value>' line.")
    kinds = {line[0] for line in lines}
    for kind in ("o", "s", "m"):
        if kind not in kinds:
            raise invalid_sdp(f"it has no '{kind}=' line.")
    return text


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise _bad_request(f"The {what} is not valid JSON.", "invalid_json", what) from None
    if not isinstance(value, dict):
        raise _bad_request(f"The {what} must be a JSON object.", "invalid_json", what)
    return value


# -- policy --------------------------------------------------------------------------------


def default_model(policy: TenantPolicy) -> str:
    if policy.allows_model(DEFAULT_MODEL) or not policy.models:
        return DEFAULT_MODEL
    return min(policy.models)


def police_session(session: Mapping[str, Any], policy: TenantPolicy) -> tuple[dict[str, Any], str | None]:
    """The session config the policy allows (clamped, model filled in), and the model to admit.

    Allowlist refusals are 403 naming the policy list (`model_not_allowed`,
    `voice_not_allowed`, `tool_not_allowed`); a malformed `max_output_tokens` is 400.
    """
    session = dict(session)
    kind = session.get("type", "realtime")
    if kind not in ("realtime", "transcription"):
        raise _bad_request("'session.type' must be 'realtime' or 'transcription'.", "invalid_value", "session.type")
    session["type"] = kind
    model: str | None = None
    if kind == "realtime":
        if "model" not in session:
            session["model"] = default_model(policy)  # upstream runs exactly what admission checked
        raw_model = session.get("model")
        if not isinstance(raw_model, str) or not raw_model:
            raise _bad_request("'session.model' must be a non-empty string.", "invalid_value", "session.model")
        model = raw_model
    verdict = police_client_event({"type": "session.update", "session": session}, policy, session_has_ceiling=False)
    if isinstance(verdict, Refused):
        detail = verdict.detail
        status = 400 if detail.code == "invalid_value" else 403
        raise GatewayError(status, detail.message, code=detail.code, param=detail.param)
    if isinstance(verdict, Rewritten):
        session = dict(verdict.event["session"])
    return session, model


def policy_session(policy: TenantPolicy) -> dict[str, Any] | None:
    """The session a raw offer gets from the policy, or None when the policy adds nothing."""
    if policy.max_output_tokens is None and policy.models is None:
        return None
    return police_session({"type": "realtime"}, policy)[0]


def clamp_expires_after(body: dict[str, Any], policy: TenantPolicy) -> None:
    """Cap `expires_after.seconds` at the policy's maximum (inserting it when the default is longer)."""
    ceiling = policy.expires_after_max_seconds
    expires = body.get("expires_after")
    if expires is None:
        if ceiling < UPSTREAM_SECRET_SECONDS:
            body["expires_after"] = {"anchor": "created_at", "seconds": ceiling}
        return
    if not isinstance(expires, dict):
        raise _bad_request("'expires_after' must be an object.", "invalid_value", "expires_after")
    seconds = expires.get("seconds", UPSTREAM_SECRET_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise _bad_request("'expires_after.seconds' must be an integer.", "invalid_value", "expires_after.seconds")
    anchor = expires.get("anchor", "created_at")
    body["expires_after"] = {**expires, "anchor": anchor, "seconds": min(seconds, ceiling)}


async def _policy(services: GatewayServices, tenant_id: str) -> TenantPolicy:
    if services.enforcement is None:
        return UNRESTRICTED
    policy, _ = await services.enforcement.policy_for(tenant_id)
    return policy


async def _admit(
    services: GatewayServices, tenant_id: str, session_id: str, model: str | None
) -> tuple[TenantPolicy, bool]:
    if services.live.draining:
        raise draining_error()
    if services.enforcement is None:
        return UNRESTRICTED, False
    decided = await services.enforcement.admit(tenant_id, session_id, model, time.time())
    return decided.policy, decided.leased


async def _release(services: GatewayServices, tenant_id: str, session_id: str, leased: bool) -> None:
    if leased and services.enforcement is not None:
        await services.enforcement.release(tenant_id, session_id)


def _count_refusal(services: GatewayServices, error: GatewayError) -> None:
    with contextlib.suppress(Exception):
        services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()


# -- upstream ------------------------------------------------------------------------------


async def _upstream(state: RealtimeHttp, path: str, safety_id: str, *, accept: str, **kwargs: Any) -> httpx.Response:
    """POST to the upstream with voxgate's key; non-2xx and transport failures become GatewayErrors."""
    headers = {
        **upstream_headers(state.services.settings.upstream, safety_id, None),
        "Accept": accept,
        **kwargs.pop("headers", {}),
    }
    try:
        response = await state.http.post(state.upstream_url(path), headers=headers, **kwargs)
    except httpx.TimeoutException:
        raise GatewayError(
            503, "Timed out waiting for the upstream Realtime API.", code="upstream_timeout", retry_after=1.0
        ) from None
    except httpx.HTTPError:
        raise GatewayError(502, "Could not reach the upstream Realtime API.", code="upstream_unreachable") from None
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


def call_id_from_location(location: str | None) -> str | None:
    """The last path segment of upstream's `Location` (relative or absolute)."""
    if not location:
        return None
    segment = urlsplit(location).path.rstrip("/").rpartition("/")[2]
    return segment if _CALL_ID.fullmatch(segment) else None


async def _hand_to_monitor(services: GatewayServices, call: Call) -> None:
    monitor = getattr(services, "calls_monitor", None)
    if monitor is None:
        return
    try:
        await monitor.attach(call)
    except Exception:
        # The call is live either way; losing its metering is logged loudly, not hidden.
        log.exception("the sideband monitor could not attach call %s", call.call_id)


def _has_monitor(services: GatewayServices) -> bool:
    return getattr(services, "calls_monitor", None) is not None


# -- routes --------------------------------------------------------------------------------


@post("/v1/realtime/client_secrets", operation_id="realtime_client_secrets_create", tags=TAGS, status_code=200)
async def create_client_secret(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Mint an ephemeral client secret (OpenAI's request and response), policed by the tenant's policy.

    Tenant API key only. The minted secret is not a live session: admission runs (budget,
    concurrency, start rate, headroom) and its concurrency lease is released at once.
    """
    state = _state(request)
    services = state.services
    try:
        caller = await authenticate(request, state, allow_browser=False)
        too_large = GatewayError(413, "The request body is too large.", code="request_too_large")
        body = _json_object(await _read_body(request, MAX_JSON_BYTES, too_large), "body")
        policy = await _policy(services, caller.tenant_id)
        raw_session = body.get("session", {"type": "realtime"})
        if not isinstance(raw_session, dict):
            raise _bad_request("'session' must be an object.", "invalid_value", "session")
        session, model = police_session(raw_session, policy)
        body["session"] = session
        clamp_expires_after(body, policy)
        session_id = new_id("vgs")
        policy, leased = await _admit(services, caller.tenant_id, session_id, model)
        # A minted secret is not a live session: admission was the gate, the lease is not kept.
        await _release(services, caller.tenant_id, session_id, leased)
        json_headers = {"Content-Type": "application/json"}
        response = await _upstream(
            state,
            "/realtime/client_secrets",
            caller.safety_id,
            accept="application/json",
            content=orjson.dumps(body),
            headers=json_headers,
        )
    except GatewayError as error:
        _count_refusal(services, error)
        raise
    minted = _json_object(response.content, "upstream response")
    raw_minted_session = minted.get("session")
    minted_session: dict[str, Any] = raw_minted_session if isinstance(raw_minted_session, dict) else {}
    upstream_session_id = minted_session.get("id") if isinstance(minted_session.get("id"), str) else None
    now = time.time()
    services.ledger.submit(
        SessionStarted(
            session_id=session_id,
            tenant_id=caller.tenant_id,
            api_key_id=caller.api_key_id,
            transport="client_secret",
            intent=session.get("type", "realtime"),
            model=model,
            end_user_hash=caller.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
        )
    )
    if upstream_session_id is not None:
        voice = _voice(minted_session)
        services.ledger.submit(
            SessionInfoRecord(session_id, minted_session.get("model") or model, voice, upstream_session_id)
        )
        secret_key = upstream_session_id
    else:
        log.warning("upstream minted a client secret without a session id; it cannot be attached later")
        secret_key = f"unattachable:{session_id}"  # no upstream id matches it; the sweep still ends the session
    await state.calls.record_minted(
        MintedSecret(secret_key, caller.tenant_id, session_id, caller.safety_id), secret_expiry(minted, body, now)
    )
    return Response(response.content, status_code=200, media_type="application/json")


def secret_expiry(minted: Mapping[str, Any], request: Mapping[str, Any], now: float) -> float:
    """When a minted secret stops being usable: upstream's `expires_at`, else what was asked for."""
    expires_at = minted.get("expires_at")
    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        return float(expires_at)
    asked = request.get("expires_after")
    seconds = asked.get("seconds") if isinstance(asked, dict) else None
    return now + (seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else UPSTREAM_SECRET_SECONDS)


def _voice(session: Mapping[str, Any]) -> str | None:
    audio = session.get("audio")
    output = audio.get("output") if isinstance(audio, dict) else None
    voice = output.get("voice") if isinstance(output, dict) else None
    return voice if isinstance(voice, str) else None


@post("/v1/realtime/calls", operation_id="realtime_calls_create", tags=TAGS, status_code=201)
async def create_call(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Broker a WebRTC SDP offer: multipart (`sdp` + `session`, tenant key) or raw `application/sdp`
    (tenant key or browser JWT). Answers 201 with the SDP answer and `Location` at voxgate."""
    state = _state(request)
    services = state.services
    try:
        content_type = (request.headers.get("content-type") or "").strip()
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in ("application/sdp", "multipart/form-data"):
            raise GatewayError(
                415,
                "Send the offer as 'application/sdp' or 'multipart/form-data' (sdp + session).",
                code="unsupported_content_type",
            )
        multipart = media == "multipart/form-data"
        caller = await authenticate(request, state, allow_browser=not multipart)
        session_part: dict[str, Any] | None = None
        if multipart:
            too_large = GatewayError(413, "The request body is too large.", code="request_too_large")
            parts = parse_multipart(await _read_body(request, MAX_MULTIPART_BYTES, too_large), content_type)
            if "sdp" not in parts:
                raise _bad_request("The multipart body has no 'sdp' part.", "missing_required_parameter", "sdp")
            sdp = validate_sdp(parts["sdp"])
            if "session" in parts:
                if len(parts["session"]) > MAX_JSON_BYTES:
                    raise GatewayError(413, "The session part is too large.", code="request_too_large", param="session")
                session_part = _json_object(parts["session"], "session")
        else:
            too_large = GatewayError(
                413, f"The SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB.", code="sdp_too_large", param="sdp"
            )
            sdp = validate_sdp(await _read_body(request, MAX_SDP_BYTES, too_large))
        policy = await _policy(services, caller.tenant_id)
        if session_part is not None:
            session: dict[str, Any] | None
            session, model = police_session(session_part, policy)
        else:
            session = policy_session(policy)
            model = session["model"] if session is not None else default_model(policy)
        session_id = new_id("vgs")
        policy, leased = await _admit(services, caller.tenant_id, session_id, model)
    except GatewayError as error:
        _count_refusal(services, error)
        raise
    try:
        if session is not None:
            files = {
                "sdp": (None, sdp.encode("ascii"), "application/sdp"),
                "session": (None, orjson.dumps(session), "application/json"),
            }
            response = await _upstream(
                state, "/realtime/calls", caller.safety_id, accept="application/sdp", files=files
            )
        else:
            sdp_headers = {"Content-Type": "application/sdp"}
            response = await _upstream(
                state,
                "/realtime/calls",
                caller.safety_id,
                accept="application/sdp",
                content=sdp.encode("ascii"),
                headers=sdp_headers,
            )
        call_id = call_id_from_location(response.headers.get("location"))
        if call_id is None:
            raise GatewayError(502, "The upstream answered without a usable call id.", code="upstream_bad_response")
    except BaseException:
        await _release(services, caller.tenant_id, session_id, leased)
        raise
    if leased and not _has_monitor(services):
        # Nothing would heartbeat or release the lease; admission was the gate (docs/webrtc.md).
        await _release(services, caller.tenant_id, session_id, leased)
        leased = False
    now = time.time()
    call = Call(
        call_id=call_id,
        tenant_id=caller.tenant_id,
        session_id=session_id,
        policy=policy,
        safety_id=caller.safety_id,
        leased=leased,
        source="brokered",
        api_key_id=caller.api_key_id,
        model=model,
        created_at=now,
    )
    try:
        recorded = await state.calls.record(call)
    except Exception:
        log.exception("could not record call %s; hanging it up", call_id)
        await _hangup_upstream(state, call_id, caller.safety_id)
        await _release(services, caller.tenant_id, session_id, leased)
        raise GatewayError(
            503, "The gateway could not record the call; retry.", code="call_not_recorded", retry_after=1.0
        ) from None
    if not recorded:
        raise GatewayError(502, "The upstream reused a call id.", code="upstream_bad_response")
    services.ledger.submit(
        SessionStarted(
            session_id=session_id,
            tenant_id=caller.tenant_id,
            api_key_id=caller.api_key_id,
            transport="webrtc",
            intent=(session or {}).get("type", "realtime"),
            model=model,
            end_user_hash=caller.safety_id,
            gateway_instance=services.settings.server.instance_id,
            started_at=now,
        )
    )
    await _hand_to_monitor(services, call)
    return Response(
        response.content,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{call_id}"},
    )


async def _hangup_upstream(state: RealtimeHttp, call_id: str, safety_id: str) -> bool:
    """Hang up upstream; True if upstream says it is (now or already) gone."""
    try:
        await _upstream(state, f"/realtime/calls/{call_id}/hangup", safety_id, accept="*/*", content=b"")
    except GatewayError as error:
        if error.status == 404:
            return True
        log.warning("upstream hangup of %s failed: %s", call_id, error.message)
        return False
    return True


async def _caller_call(request: Request[Any, Any, Any], state: RealtimeHttp, call_id: str) -> tuple[Caller, Call]:
    caller = await authenticate(request, state, allow_browser=True)
    call = await state.calls.get(call_id) if _CALL_ID.fullmatch(call_id) else None
    if call is None or not _may_see(caller, call):
        raise call_not_found(call_id)
    return caller, call


@get("/v1/realtime/calls/{call_id:str}", operation_id="realtime_calls_retrieve", tags=TAGS)
async def get_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[dict[str, Any]]:
    """A call's state. Only the owning tenant (or the browser user who placed it) sees it; else 404."""
    _, call = await _caller_call(request, _state(request), call_id)
    return Response(call.public(), status_code=200)


@post("/v1/realtime/calls/{call_id:str}/hangup", operation_id="realtime_calls_hangup", tags=TAGS, status_code=200)
async def hangup_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[bytes]:
    """End one of the tenant's calls (tenant key, or the browser JWT of the user who placed it)."""
    state = _state(request)
    caller, call = await _caller_call(request, state, call_id)
    if call.state == "active":
        now = time.time()
        # Marked first, so the reason is "hangup" and not what the sideband sees when the call drops.
        ended_here = await state.calls.end(call_id, "hangup", now)
        if not await _hangup_upstream(state, call_id, caller.safety_id):
            if ended_here:
                await state.calls.reopen(call_id, "hangup")
            raise GatewayError(502, "The upstream did not confirm the hangup; retry.", code="upstream_hangup_failed")
        if ended_here:
            state.services.ledger.submit(SessionEnded(call.session_id, now, "client_hangup", f"call {call_id}"))
    return Response(b"", status_code=200, media_type="application/json")


@post(
    "/v1/voxgate/calls/{call_id:str}/attach",
    operation_id="voxgate_calls_attach",
    tags=["voxgate", "webrtc"],
    status_code=200,
)
async def attach_call(request: Request[Any, Any, Any], call_id: CallId) -> Response[dict[str, Any]]:
    """Hand voxgate a call a browser opened directly with a client secret voxgate minted.

    Tenant API key only, and at most `ATTACH_BURST` attempts at once per tenant (then
    `ATTACH_PER_SECOND`; 429 past it). A tenant holding no minted secret that is still
    attachable gets 404 before anything upstream. Otherwise voxgate looks up the call's
    session over the sideband; unless that session is one voxgate minted for this tenant,
    the answer is 404. Then the call is recorded and metered and policed by the sideband
    monitor like a brokered call.
    """
    state = _state(request)
    services = state.services
    caller = await authenticate(request, state, allow_browser=False)
    state.take_attach_attempt(caller.tenant_id, time.monotonic())
    if not _CALL_ID.fullmatch(call_id):
        raise call_not_found(call_id)
    existing = await state.calls.get(call_id)
    if existing is not None:
        if existing.tenant_id != caller.tenant_id:
            raise call_not_found(call_id)
        return Response(existing.public(), status_code=200)  # attaching twice is harmless
    # Our own records first: without a minted secret of its own to attach, a tenant's
    # attempt never reaches upstream (no handshake, nothing sent into anyone's call).
    if not await state.calls.has_attachable_secret(caller.tenant_id):
        raise call_not_found(call_id)
    upstream_session_id = await probe_call_session(state, call_id, caller.safety_id)
    minted = await state.calls.minted(upstream_session_id) if upstream_session_id else None
    if minted is None or minted.tenant_id != caller.tenant_id:
        raise call_not_found(call_id)
    policy = await _policy(services, caller.tenant_id)
    call = Call(
        call_id=call_id,
        tenant_id=caller.tenant_id,
        session_id=minted.session_id,
        policy=policy,
        safety_id=minted.end_user_hash or caller.safety_id,
        leased=False,
        source="attached",
        api_key_id=caller.api_key_id,
        upstream_session_id=upstream_session_id,
    )
    if not await state.calls.record_attached(call):
        again = await state.calls.get_for_tenant(call_id, caller.tenant_id)
        if again is None:
            raise call_not_found(call_id)
        return Response(again.public(), status_code=200)
    await _hand_to_monitor(services, call)
    return Response(call.public(), status_code=200)


async def probe_call_session(state: RealtimeHttp, call_id: str, safety_id: str) -> str | None:
    """The upstream session id of a live call, read over a short-lived sideband WebSocket.

    Read-only: it waits up to `PROBE_TIMEOUT_S` for the first event that carries `session.id`
    (`session.created`/`session.updated`) and never sends anything into the call, which may be
    another tenant's until the id is checked. An upstream that does not know the call answers
    404, which becomes `call_not_found`; no session event in time is None (also a 404).
    """
    try:
        ws = await open_upstream(state.services.settings.upstream, {"call_id": call_id}, safety_id)
    except GatewayError as error:
        if 400 <= error.status < 500:
            raise call_not_found(call_id) from None
        raise
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            while True:
                found = _session_id_of(await ws.recv())
                if found is not None:
                    return found
    except (TimeoutError, ConnectionClosed):
        return None
    finally:
        with contextlib.suppress(Exception):
            await ws.close()


def _session_id_of(message: str | bytes) -> str | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") not in ("session.created", "session.updated"):
        return None
    session = event.get("session")
    found = session.get("id") if isinstance(session, dict) else None
    return found if isinstance(found, str) and found else None


ROUTES: Final = [create_client_secret, create_call, get_call, hangup_call, attach_call]


async def _close_state(app: Any) -> None:
    state = getattr(app.state, "realtime_http", None)
    if isinstance(state, RealtimeHttp):
        await state.close()


def register(app_config: AppConfig) -> None:
    """Add the routes and close the upstream HTTP client at shutdown (called by `VoxgatePlugin`)."""
    app_config.route_handlers.extend(ROUTES)
    app_config.on_shutdown.append(_close_state)
