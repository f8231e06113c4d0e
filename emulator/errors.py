"""OpenAI-shaped errors: `error` server events and HTTP error bodies."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from typing import Any

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 22) -> str:
    """A random id in OpenAI's style, e.g. `event_C9G5RJeJ2gF77mV7f2B1a`."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


class ProtocolError(Exception):
    """A client mistake the server answers with an `error` event; the socket stays open."""

    def __init__(
        self, message: str, *, code: str | None, param: str | None = None, type: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.type = type

    @classmethod
    def missing(cls, param: str) -> ProtocolError:
        return cls(f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)

    @classmethod
    def invalid(cls, param: str, message: str) -> ProtocolError:
        return cls(message, code="invalid_value", param=param)

    @classmethod
    def unknown_parameter(cls, param: str) -> ProtocolError:
        return cls(f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)


def error_event(
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    type: str = "invalid_request_error",
    client_event_id: str | None = None,
) -> dict[str, Any]:
    """A GA `error` server event; `client_event_id` echoes the offending client event."""
    return {
        "type": "error",
        "event_id": new_id("event"),
        "error": {
            "type": type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def event_for(exc: ProtocolError, client_event_id: str | None) -> dict[str, Any]:
    return error_event(exc.message, code=exc.code, param=exc.param, type=exc.type, client_event_id=client_event_id)


def answer_client_text(
    text: str, received: list[dict[str, Any]], dispatch: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The server events that answer one client text frame: the event is kept in `received` and
    dispatched; a frame that is not a JSON object, or a `ProtocolError` the dispatch raises, is
    answered with an `error` event (echoing the client's `event_id`) and the socket stays open."""
    try:
        event = json.loads(text)
    except ValueError:
        return [error_event("The server failed to parse the event: it is not valid JSON.", code="invalid_json")]
    if not isinstance(event, dict):
        return [error_event("The event must be a JSON object.", code="invalid_json")]
    received.append(event)
    client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    try:
        return dispatch(event)
    except ProtocolError as exc:
        return [event_for(exc, client_event_id)]


def http_error_body(message: str, *, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}
