"""Settings of the emulator, the faults a test can inject, and the rate limits it reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmulatorConfig:
    """How the emulator behaves; fixed for the lifetime of one `RealtimeEmulator`.

    `api_key=None` accepts any non-empty bearer key; otherwise only that key is accepted.
    """

    api_key: str | None = None
    max_session_seconds: float = 3600.0
    event_latency_ms: float = 0.0
    default_model: str = "gpt-realtime"
    default_instructions: str = "You are a helpful voice assistant. Answer briefly."
    # Wait out each audio delta's duration before the next one, as a real model speaking does.
    pace_audio: bool = False
    # Reported in every `rate_limits.updated`; `RealtimeEmulator.rate_limits` is the live copy.
    requests_limit: int = 1000
    tokens_limit: int = 50_000


@dataclass
class Faults:
    """Failures to inject; mutate `RealtimeEmulator.faults` at any time.

    - `connect_status`: refuse every new handshake with this HTTP status (and an
      OpenAI-shaped JSON body) before the WebSocket upgrade; `None` accepts.
    - `retry_after_s`: value of the `retry-after` header sent with a 429 refusal.
    - `connect_delay_s`: wait this long before answering a handshake.
    - `drop_after_server_events`: abort a connection (TCP reset, no close frame) once it
      has been sent this many server events.
    - `event_latency_ms`: wait this long before sending each server event.
    """

    connect_status: int | None = None
    retry_after_s: int = 1
    connect_delay_s: float = 0.0
    drop_after_server_events: int | None = None
    event_latency_ms: float = 0.0


@dataclass
class RateLimits:
    """The organisation-wide limits reported in `rate_limits.updated`.

    Each response takes one request when it starts and its `total_tokens` when it ends;
    nothing is ever replenished, so a test can drive `tokens_remaining` down predictably.
    """

    requests_limit: int = 1000
    requests_remaining: int = 1000
    requests_reset_seconds: float = 60.0
    tokens_limit: int = 50_000
    tokens_remaining: int = 50_000
    tokens_reset_seconds: float = 60.0

    def start_response(self) -> list[dict[str, object]]:
        """Take one request and return the `rate_limits` list to report."""
        self.requests_remaining = max(0, self.requests_remaining - 1)
        return [
            {
                "name": "requests",
                "limit": self.requests_limit,
                "remaining": self.requests_remaining,
                "reset_seconds": self.requests_reset_seconds,
            },
            {
                "name": "tokens",
                "limit": self.tokens_limit,
                "remaining": self.tokens_remaining,
                "reset_seconds": self.tokens_reset_seconds,
            },
        ]

    def finish_response(self, total_tokens: int) -> None:
        self.tokens_remaining = max(0, self.tokens_remaining - total_tokens)
