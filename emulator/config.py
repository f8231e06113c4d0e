"""Settings of the emulator, the faults a test can inject, and the rate limits it reports."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    # GPT-Live: seconds between `session.usage.updated` events (the real API: about 15).
    live_usage_interval_s: float = 15.0
    # GPT-Live models `session.start` accepts; any other is refused with `model_not_found`.
    live_models: tuple[str, ...] = ("gpt-live-1", "gpt-live-1.1")
    # GPT-Live over WebRTC bills this much voice time from the create, credited to the session.
    live_webrtc_prepaid_s: int = 15
    # Realtime translation models the `?model=` query accepts.
    translation_models: tuple[str, ...] = ("gpt-realtime-translate",)


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
    - `live_response_fails`: GPT-Live delegated responses end `response.failed`.
    """

    connect_status: int | None = None
    retry_after_s: int = 1
    connect_delay_s: float = 0.0
    drop_after_server_events: int | None = None
    event_latency_ms: float = 0.0
    live_response_fails: bool = False


class _Bucket:
    """One limit: `limit` units a window, what was taken flowing back at `limit / window` a second."""

    def __init__(self, limit: int, remaining: int, window_s: float, now: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._level = float(min(limit, remaining))
        self._at = now

    def remaining(self, now: float) -> float:
        refill = max(0.0, now - self._at) * self.limit / self.window_s
        return min(float(self.limit), self._level + refill)

    def set(self, remaining: float, now: float) -> None:
        self._level, self._at = max(0.0, min(float(self.limit), remaining)), now

    def take(self, amount: int, now: float) -> None:
        self.set(self.remaining(now) - amount, now)

    def reset_seconds(self, now: float) -> float:
        """Seconds until the bucket is full again (0 when it is)."""
        return round((self.limit - self.remaining(now)) * self.window_s / self.limit, 3) if self.limit else 0.0

    def report(self, name: str, now: float) -> dict[str, object]:
        return {
            "name": name,
            "limit": self.limit,
            "remaining": int(self.remaining(now)),
            "reset_seconds": self.reset_seconds(now),
        }


class RateLimits:
    """The organisation-wide limits reported in `rate_limits.updated`, replenished as OpenAI's are.

    Each limit is `limit` per `window_s` (a minute): a response takes one request when it
    starts and its `total_tokens` when it ends, and what was taken flows back at
    `limit / window_s` a second, so `remaining` recovers to `limit` over the window and
    `reset_seconds` is the time until it is full again. Assigning `tokens_remaining` (or
    `requests_remaining`) sets the level now. `clock` is injectable: a test that drives the
    figures freezes or steps it.
    """

    def __init__(
        self,
        requests_limit: int = 1000,
        requests_remaining: int | None = None,
        tokens_limit: int = 50_000,
        tokens_remaining: int | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        now = clock()
        self._requests = _Bucket(
            requests_limit, requests_limit if requests_remaining is None else requests_remaining, window_s, now
        )
        self._tokens = _Bucket(
            tokens_limit, tokens_limit if tokens_remaining is None else tokens_remaining, window_s, now
        )

    @property
    def requests_limit(self) -> int:
        return self._requests.limit

    @property
    def tokens_limit(self) -> int:
        return self._tokens.limit

    @property
    def requests_remaining(self) -> int:
        return int(self._requests.remaining(self.clock()))

    @requests_remaining.setter
    def requests_remaining(self, value: int) -> None:
        self._requests.set(value, self.clock())

    @property
    def tokens_remaining(self) -> int:
        return int(self._tokens.remaining(self.clock()))

    @tokens_remaining.setter
    def tokens_remaining(self, value: int) -> None:
        self._tokens.set(value, self.clock())

    def start_response(self) -> list[dict[str, object]]:
        """Take one request and return the `rate_limits` list to report."""
        now = self.clock()
        self._requests.take(1, now)
        return [self._requests.report("requests", now), self._tokens.report("tokens", now)]

    def finish_response(self, total_tokens: int) -> None:
        self._tokens.take(max(0, total_tokens), self.clock())
