"""OpenAI-shaped errors: `{"error": {"message", "type", "code", "param"}}` with the right status."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

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
        return {"error": {"message": self.message, "type": self.error_type, "code": self.code, "param": self.param}}

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
