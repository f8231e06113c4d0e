"""The per-session governor: events and time in, actions out.

One `SessionGovernor` lives as long as one Realtime session, whatever transport carries
it (proxied WebSocket, WebRTC sideband). The shell feeds it every client and server
event it decodes, plus ticks, always with an explicit `now` (Unix seconds), and executes
the actions it returns in order. It never raises on bad input: a message it cannot
understand becomes an `error` event for the client. See docs/governor.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.actions import (
    FORWARD_ONLY,
    NOTHING,
    Action,
    ErrorDetail,
    Forward,
    Persist,
    RateLimit,
    RateLimitsRecord,
    SendToClient,
    SessionInfoRecord,
    TranscriptionRecord,
    UsageRecord,
    error_event,
)
from policies.pricing import PriceTable, cost_micro_usd, transcription_cost_micro_usd
from policies.usage import parse_response_usage, parse_transcription_usage

# Close codes a shell uses; documented in docs/close-codes.md.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BAD_GATEWAY = 1014


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session belongs to, fixed at admission."""

    session_id: str
    tenant_id: str
    model: str
    intent: str = "realtime"


@dataclass(slots=True)
class SessionTotals:
    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    transcription_cost_micro_usd: int = 0


class SessionGovernor:
    """Meters one Realtime session; later policies extend the same three entry points."""

    def __init__(self, identity: SessionIdentity, prices: PriceTable) -> None:
        self.identity = identity
        self.prices = prices
        self.model = identity.model
        self.voice: str | None = None
        self.transcription_model: str | None = None
        self.upstream_session_id: str | None = None
        self.totals = SessionTotals()
        self.expired = False
        self._seen_responses: set[str] = set()
        self._seen_transcriptions: set[tuple[str, int]] = set()
        self._event_seq = 0

    # -- entry points -------------------------------------------------------------------

    def on_client_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded client event. Returns what to do with it."""
        if not isinstance(event.get("type"), str):
            return self._reject("The event must be an object with a string 'type'.", "invalid_event", event)
        return FORWARD_ONLY

    def on_client_garbage(self, reason: str, now: float) -> Sequence[Action]:
        """A client message that is not a JSON object: refuse it, forward nothing."""
        return (SendToClient(error_event(ErrorDetail(message=reason, code="invalid_json"), self._next_id())),)

    def on_server_event(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """A decoded server event. Returns what to do with it."""
        kind = event.get("type")
        if kind == "response.done":
            return self._response_done(event, now)
        if kind == "rate_limits.updated":
            return self._rate_limits(event, now)
        if kind in ("session.created", "session.updated"):
            return self._session_config(event)
        if kind == "conversation.item.input_audio_transcription.completed":
            return self._transcription(event, now)
        if kind == "error":
            error = event.get("error")
            if isinstance(error, Mapping) and error.get("code") == "session_expired":
                self.expired = True
        return FORWARD_ONLY

    def on_tick(self, now: float) -> Sequence[Action]:
        """Time passed. Nothing is time-driven yet; caps arrive with the policy engine."""
        return NOTHING

    # -- server events ------------------------------------------------------------------

    def _response_done(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        response = event.get("response")
        if not isinstance(response, Mapping):
            return FORWARD_ONLY
        response_id = response.get("id")
        if not isinstance(response_id, str) or not response_id or response_id in self._seen_responses:
            return FORWARD_ONLY
        self._seen_responses.add(response_id)
        usage = parse_response_usage(response.get("usage"))
        price, _ = self.prices.price_for(self.model)
        cost = cost_micro_usd(usage, price)
        status = response.get("status")
        record = UsageRecord(
            response_id=response_id,
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            model=self.model,
            status=status if isinstance(status, str) else "unknown",
            occurred_at=now,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            input_text_tokens=usage.input_text,
            input_audio_tokens=usage.input_audio,
            input_image_tokens=usage.input_image,
            cached_text_tokens=usage.cached_text,
            cached_audio_tokens=usage.cached_audio,
            cached_image_tokens=usage.cached_image,
            output_text_tokens=usage.output_text,
            output_audio_tokens=usage.output_audio,
            cost_micro_usd=cost,
            price_version=self.prices.version,
        )
        totals = self.totals
        totals.responses += 1
        totals.input_tokens += usage.input_tokens
        totals.output_tokens += usage.output_tokens
        totals.cost_micro_usd += cost
        return (Forward(), Persist(record))

    def _rate_limits(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        raw = event.get("rate_limits")
        limits: list[RateLimit] = []
        if isinstance(raw, list):
            for item in raw:
                if not isinstance(item, Mapping):
                    continue
                name, limit = item.get("name"), _as_int(item.get("limit"))
                remaining, reset = _as_int(item.get("remaining")), item.get("reset_seconds")
                if not isinstance(name, str) or limit is None or remaining is None:
                    continue
                reset_s = float(reset) if isinstance(reset, int | float) and not isinstance(reset, bool) else 0.0
                limits.append(RateLimit(name=name, limit=limit, remaining=remaining, reset_seconds=reset_s))
        if not limits:
            return FORWARD_ONLY
        record = RateLimitsRecord(
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            observed_at=now,
            limits=tuple(limits),
        )
        return (Forward(), Persist(record))

    def _session_config(self, event: Mapping[str, Any]) -> Sequence[Action]:
        session = event.get("session")
        if not isinstance(session, Mapping):
            return FORWARD_ONLY
        model = session.get("model")
        if isinstance(model, str) and model:
            self.model = model
        sid = session.get("id")
        if isinstance(sid, str) and sid:
            self.upstream_session_id = sid
        audio = session.get("audio")
        audio_in = audio.get("input") if isinstance(audio, Mapping) else None
        audio_out = audio.get("output") if isinstance(audio, Mapping) else None
        if isinstance(audio_out, Mapping):
            voice = audio_out.get("voice")
            if isinstance(voice, str):
                self.voice = voice
            elif isinstance(voice, Mapping) and isinstance(voice.get("id"), str):
                self.voice = str(voice["id"])
        if isinstance(audio_in, Mapping):
            transcription = audio_in.get("transcription")
            if isinstance(transcription, Mapping) and isinstance(transcription.get("model"), str):
                self.transcription_model = str(transcription["model"])
            elif transcription is None and "transcription" in audio_in:
                self.transcription_model = None
        info = SessionInfoRecord(
            session_id=self.identity.session_id,
            model=self.model,
            voice=self.voice,
            upstream_session_id=self.upstream_session_id,
        )
        return (Forward(), Persist(info))

    def _transcription(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        item_id = event.get("item_id")
        content_index = _as_int(event.get("content_index")) or 0
        usage = parse_transcription_usage(event.get("usage"))
        if not isinstance(item_id, str) or usage is None:
            return FORWARD_ONLY
        key = (item_id, content_index)
        if key in self._seen_transcriptions:
            return FORWARD_ONLY
        self._seen_transcriptions.add(key)
        model = self.transcription_model or "unknown-transcription-model"
        price, _ = self.prices.transcription_price_for(model)
        cost = transcription_cost_micro_usd(usage, price)
        self.totals.transcription_cost_micro_usd += cost
        record = TranscriptionRecord(
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            item_id=item_id,
            content_index=content_index,
            model=model,
            occurred_at=now,
            usage_type=usage.kind,
            input_text_tokens=usage.input_text,
            input_audio_tokens=usage.input_audio,
            output_tokens=usage.output_tokens,
            duration_ms=usage.duration_ms,
            cost_micro_usd=cost,
            price_version=self.prices.version,
        )
        return (Forward(), Persist(record))

    # -- helpers ------------------------------------------------------------------------

    def _reject(self, message: str, code: str, event: Mapping[str, Any]) -> Sequence[Action]:
        client_event_id = event.get("event_id")
        detail = ErrorDetail(
            message=message,
            code=code,
            event_id=client_event_id if isinstance(client_event_id, str) else None,
        )
        return (SendToClient(error_event(detail, self._next_id())),)

    def _next_id(self) -> str:
        self._event_seq += 1
        return f"event_vg{self.identity.session_id[-12:]}{self._event_seq:06d}"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
