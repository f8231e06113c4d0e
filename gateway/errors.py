"""OpenAI-shaped errors: `{"error": {"message", "type", "code", "param"}}` with the right status.

`outage_refusal` is the one place that decides which exceptions mean "Postgres or Redis is
unreachable" (a retryable 503) rather than a bug (a 500).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg
import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("voxgate.errors")

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


# An error echoes what the caller sent (an id, a name, a path) only this far: a 100 KB name is not
# sent back whole.
MAX_MESSAGE_CHARS = 512
MAX_PARAM_CHARS = 128


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class GatewayError(Exception):
    """An error that crosses the public API. Its message must never contain a secret."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def error_type(self) -> str:
        if self.type:
            return self.type
        return _TYPE_FOR_STATUS.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": _bounded(self.message, MAX_MESSAGE_CHARS),
                "type": self.error_type,
                "code": self.code,
                "param": None if self.param is None else _bounded(self.param, MAX_PARAM_CHARS),
            }
        }

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def response_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.headers}
        if self.retry_after is not None:
            seconds = max(0.0, self.retry_after)
            headers["retry-after"] = str(max(1, int(seconds + 0.999)))
            headers["retry-after-ms"] = str(int(seconds * 1000))
        # The SDK retries 408/409/429/5xx unless told otherwise; say it explicitly.
        headers["x-should-retry"] = "true" if self.status in (408, 409, 429) or self.status >= 500 else "false"
        return headers


def invalid_api_key() -> GatewayError:
    return GatewayError(
        401,
        "Incorrect API key provided. Use a voxgate tenant key (vg_live_...) as the bearer token.",
        code="invalid_api_key",
    )


def missing_api_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Send 'Authorization: Bearer <key>' or the "
        "'openai-insecure-api-key.<key>' WebSocket subprotocol.",
        code="missing_api_key",
    )


# -- transient dependency outages ---------------------------------------------------------

# How long a client is told to wait before retrying when Postgres or Redis is unreachable.
DATABASE_RETRY_AFTER_S = 2.0
LIVE_STATE_RETRY_AFTER_S = 1.0
# At 300 refusals a second, one log line per outage every this many seconds is enough.
OUTAGE_LOG_INTERVAL_S = 10.0

# Postgres is unreachable, restarting or full (asyncpg reports these; SQLSTATE classes 08, 53300, 57P0x).
_POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx, and "connection was closed in the middle of operation"
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, "cannot connect now"
    asyncpg.exceptions.TooManyConnectionsError,
    # The protocol caught mid-operation by a terminated backend ("cannot switch to state 15; another
    # operation (2) is in progress"); seen in bursts when Postgres's backends are terminated.
    asyncpg.InternalClientError,
)
# redis-py wraps every socket failure (and "Too many connections") in these two.
_REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
# OSErrors that are about files, not a network peer: a bug or a misconfiguration, not an outage.
_NOT_NETWORK: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

_last_logged: dict[str, tuple[Clock, float]] = {}  # code -> the clock it was logged on, and when


# Text Postgres cannot hold (NUL, U+0000), as a text value (22021) or inside a jsonb document (22P05).
UNSTORABLE_TEXT = (asyncpg.exceptions.CharacterNotInRepertoireError, asyncpg.exceptions.UntranslatableCharacterError)


def unstorable_text() -> GatewayError:
    """Postgres refused text a request carried (a NUL in a name, an id, a query parameter): a 400, not
    a 500. What a request handler binds into a query comes from its request."""
    return GatewayError(
        400,
        "The request contains a value that cannot be stored (text may not contain NUL, U+0000).",
        code="invalid_request",
    )


def database_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "The gateway's database is unreachable; retry shortly.",
        code="database_unavailable",
        retry_after=DATABASE_RETRY_AFTER_S,
    )


def live_state_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Shared session state is unavailable; retry shortly.",
        code="live_state_unavailable",
        retry_after=LIVE_STATE_RETRY_AFTER_S,
    )


def outage_refusal(exc: BaseException, clock: Clock = SYSTEM_CLOCK) -> GatewayError | None:
    """The retryable 503 for an exception that means Postgres or Redis is unreachable, else None.
    Logged at most once every `OUTAGE_LOG_INTERVAL_S` of `clock` (the caller's `GatewayServices.clock`).

    Only the shell's own dependencies raise bare `OSError`/`TimeoutError` here: the upstream
    clients turn theirs into `GatewayError`s, and redis-py wraps its own, so a bare one comes
    from asyncpg (refused or reset connect, pool acquire timeout). Anything else is a bug: None.
    """
    if isinstance(exc, GatewayError):
        return None
    if isinstance(exc, _REDIS_DOWN):
        error = live_state_unavailable()
    elif (
        isinstance(exc, _POSTGRES_DOWN)
        or (isinstance(exc, OSError) and not isinstance(exc, _NOT_NETWORK))
        or (isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc))  # its backend went away
    ):
        error = database_unavailable()
    else:
        return None
    _log_outage(error, exc, clock)
    return error


def _log_outage(error: GatewayError, exc: BaseException, clock: Clock) -> None:
    now = clock.monotonic()
    code = error.code or ""
    last = _last_logged.get(code)
    # Times of two clocks do not compare (only tests run another): a first outage on a clock is logged.
    if last is None or last[0] is not clock or now - last[1] >= OUTAGE_LOG_INTERVAL_S:
        _last_logged[code] = (clock, now)
        log.warning(
            "refusing with 503 %s: %s: %s (logged at most every %.0f s)",
            code,
            type(exc).__name__,
            str(exc)[:200],
            OUTAGE_LOG_INTERVAL_S,
        )
