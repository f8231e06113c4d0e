"""Deciding on a WebSocket handshake: admit it, or refuse it before the upgrade."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from emulator.config import EmulatorConfig, Faults
from emulator.errors import http_error_body

KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"

_FAULT_ERRORS: dict[int, tuple[str, str, str]] = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", "server_error"),
    502: ("Bad gateway.", "server_error", "bad_gateway"),
    503: ("The server is overloaded or not ready yet.", "server_error", "service_unavailable"),
}


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer instead of the upgrade (`status`, OpenAI-shaped JSON `body`)."""

    status: int
    body: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Admission:
    api_key: str
    subprotocol: str | None  # "realtime" when the client offered it
    model: str | None
    intent: str


def request_headers(scope: dict[str, Any]) -> dict[str, str]:
    """Handshake headers with lower-cased names; repeated headers are joined with ", "."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def request_query(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def _refuse(
    status: int,
    message: str,
    *,
    type: str,
    code: str | None,
    param: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Refusal:
    return Refusal(status, http_error_body(message, type=type, code=code, param=param), headers or [])


def fault_refusal(status: int, faults: Faults) -> Refusal:
    message, kind, code = _FAULT_ERRORS.get(
        status,
        ("Injected failure.", "server_error" if status >= 500 else "invalid_request_error", "injected_fault"),
    )
    headers = [("retry-after", str(faults.retry_after_s))] if status == 429 else []
    return _refuse(status, message, type=kind, code=code, headers=headers)


def decide(
    headers: dict[str, str], query: dict[str, str], config: EmulatorConfig, faults: Faults
) -> Refusal | Admission:
    """Faults first (an overloaded server answers before it authenticates), then the beta
    marker, the API key, and the query."""
    if faults.connect_status is not None:
        return fault_refusal(faults.connect_status, faults)
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if "realtime=v1" in headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered:
        return _refuse(
            400,
            "The emulator speaks only the GA Realtime protocol; remove the OpenAI-Beta marker.",
            type="invalid_request_error",
            code="beta_not_supported",
        )
    key = None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        key = token.strip()
    else:
        key = next((p[len(KEY_SUBPROTOCOL_PREFIX) :] for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)), None)
    if not key:
        return _refuse(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            type="invalid_request_error",
            code=None,
        )
    if config.api_key is not None and key != config.api_key:
        return _refuse(
            401, f"Incorrect API key provided: {key[:6]}***.", type="invalid_request_error", code="invalid_api_key"
        )
    if "call_id" in query:
        return _refuse(
            400,
            f"Unknown call_id: '{query['call_id']}'.",
            type="invalid_request_error",
            code="invalid_value",
            param="call_id",
        )
    intent = query.get("intent", "realtime")
    if intent not in ("realtime", "transcription"):
        return _refuse(
            400,
            f"Invalid value for 'intent': '{intent}'.",
            type="invalid_request_error",
            code="invalid_value",
            param="intent",
        )
    model = query.get("model") or None
    if model in config.live_models:
        return _refuse(
            400,
            f"The model '{model}' is a GPT-Live model: use /v1/live/sessions.",
            type="invalid_request_error",
            code="invalid_model",
            param="model",
        )
    return Admission(key, "realtime" if "realtime" in offered else None, model, intent)
