"""Metering a Live session: session time, delegated Responses and Decisions, to ledger records.

Session time arrives as cumulative usage (`session.usage.updated`, then `session.closed`):
each report replaces the last, never adds to it. The meter prices the cumulative time every
time and books the difference from what it booked before, so the session's time is rounded
once. A WebRTC session is billed at least its 15 s initialisation charge from the create on.
Delegated responses are booked once per response id on their terminal event, priced by the
response's own `model` and `service_tier` (the price table's tier prices: a tier it does not
price is billed at its dearest and the row flagged); decisions once per event id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.live.records import DECISION, RESPONSE, VOICE, LiveUsageRecord
from policies.prices.table import PriceTable
from policies.pricing import duration_cost_micro_usd, token_cost_micro_usd

# The WebRTC create bills this much session time up front (credited against the session).
WEBRTC_PREPAID_MS: Final = 15_000
TERMINAL_RESPONSE_EVENTS: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass(frozen=True, slots=True)
class LiveIdentity:
    session_id: str
    tenant_id: str
    model: str
    transport: str = "websocket"  # "websocket" | "webrtc" | "sip"
    holder: str = ""  # which holding of the session (a sideband taken over gets its own): scopes the ids it makes


@dataclass(frozen=True, slots=True)
class VoiceTime:
    """Cumulative session time, milliseconds."""

    active_ms: int = 0
    standby_ms: int = 0

    @property
    def total_ms(self) -> int:
        return self.active_ms + self.standby_ms


def voice_time(usage: object) -> VoiceTime | None:
    """The cumulative time of a `usage` object; None when it is not one.

    Without an active/paused breakdown (WebSocket sessions) all `seconds` are active."""
    if not isinstance(usage, Mapping):
        return None
    seconds = usage.get("seconds")
    active, paused = usage.get("active_seconds"), usage.get("paused_seconds")
    if _number(active) and _number(paused):
        return VoiceTime(_ms(active), _ms(paused))
    if _number(seconds):
        return VoiceTime(_ms(seconds), 0)
    return None


class LiveMeter:
    """One Live session's usage, turned into `LiveUsageRecord`s; pure, never raises on bad input."""

    def __init__(self, identity: LiveIdentity, prices: PriceTable) -> None:
        self.identity = identity
        self.prices = prices
        self.price, self._price_key = prices.duration_price_for(identity.model)
        self.reported = VoiceTime()  # the newest cumulative report
        self.reported_at: float | None = None
        self.booked_time = VoiceTime()
        self.booked_voice_micro_usd = 0
        self.closed = False  # `session.closed` arrived: its usage is final
        self._responses: set[str] = set()
        self._decisions: set[str] = set()
        self._floor_ms = WEBRTC_PREPAID_MS if identity.transport == "webrtc" else 0

    @property
    def voice_rate_micro_usd_per_minute(self) -> int:
        return self.price.per_minute

    def opening(self, now: float) -> list[LiveUsageRecord]:
        """At the create: a WebRTC session's initialisation charge (nothing for a WebSocket)."""
        self.reported_at = now
        return self._book_voice(VoiceTime(), now, estimated=False)

    def resume(
        self, booked: VoiceTime, booked_micro_usd: int, reported_at: float | None, usage_ids: Iterable[str] = ()
    ) -> None:
        """Carry on metering a session another meter booked (its sideband was taken over): what
        the ledger holds for it (`booked` time at `booked_micro_usd`, last booked at `reported_at`;
        its response and decision ids) is never booked again; later reports book the rest."""
        self.booked_time, self.booked_voice_micro_usd = booked, booked_micro_usd
        self.reported, self.reported_at = booked, reported_at
        self._responses.update(usage_ids)
        self._decisions.update(usage_ids)

    def on_usage(self, usage: object, now: float, *, final: bool = False) -> list[LiveUsageRecord]:
        """A cumulative report (`final` for `session.closed`): replaces the last one."""
        if self.closed:
            return []
        time = voice_time(usage)
        if final:
            self.closed = True
        if time is None:
            return []
        self.reported, self.reported_at = time, now
        return self._book_voice(time, now, estimated=False)

    def estimate_end(self, now: float) -> list[LiveUsageRecord]:
        """No `session.closed`: the last reported time plus wall-clock since, marked estimated."""
        if self.closed:
            return []
        self.closed = True
        since = self.reported_at if self.reported_at is not None else now
        extra = max(0, int((now - since) * 1000))
        time = VoiceTime(self.reported.active_ms + extra, self.reported.standby_ms)
        return self._book_voice(time, now, estimated=True)

    def on_response_event(self, event: object, now: float) -> LiveUsageRecord | None:
        """A `response.event`: its terminal nested event is booked once per response id."""
        nested = event.get("event") if isinstance(event, Mapping) else None
        if not isinstance(nested, Mapping) or nested.get("type") not in TERMINAL_RESPONSE_EVENTS:
            return None
        response = nested.get("response")
        if not isinstance(response, Mapping):
            return None
        response_id, usage = response.get("id"), response.get("usage")
        if not isinstance(response_id, str) or response_id in self._responses or not isinstance(usage, Mapping):
            return None
        self._responses.add(response_id)
        model = response.get("model") if isinstance(response.get("model"), str) else ""
        tier = response.get("service_tier") if isinstance(response.get("service_tier"), str) else None
        status = response.get("status") if isinstance(response.get("status"), str) else str(nested["type"])[9:]
        return self._book_tokens(RESPONSE, response_id, str(model), tier, str(status), usage, now)

    def on_decision_event(self, event: object, now: float) -> LiveUsageRecord | None:
        """A `decision.event`: a completed decision's usage, once per event id."""
        if not isinstance(event, Mapping):
            return None
        nested = event.get("event")
        decision = nested.get("decision") if isinstance(nested, Mapping) else None
        event_id = event.get("event_id")
        if not isinstance(decision, Mapping) or not isinstance(event_id, str) or event_id in self._decisions:
            return None
        usage = decision.get("usage")
        if not isinstance(usage, Mapping):
            return None
        self._decisions.add(event_id)
        model = decision.get("model") if isinstance(decision.get("model"), str) else ""
        return self._book_tokens(DECISION, event_id, str(model), None, "completed", usage, now)

    # -- booking ------------------------------------------------------------------------------

    def _book_voice(self, time: VoiceTime, now: float, *, estimated: bool) -> list[LiveUsageRecord]:
        active = time.active_ms
        if time.total_ms < self._floor_ms:  # unused prepaid time is billed as active
            active = self._floor_ms - time.standby_ms
        time = VoiceTime(max(active, self.booked_time.active_ms), max(time.standby_ms, self.booked_time.standby_ms))
        cost = duration_cost_micro_usd(self.price, active_ms=time.active_ms, standby_ms=time.standby_ms)
        delta = cost - self.booked_voice_micro_usd
        if time == self.booked_time or delta < 0:
            return []
        self.booked_time, self.booked_voice_micro_usd = time, cost
        ident = self.identity
        return [
            LiveUsageRecord(
                session_id=ident.session_id,
                kind=VOICE,
                usage_id=f"{time.active_ms}:{time.standby_ms}",
                tenant_id=ident.tenant_id,
                model=ident.model,
                occurred_at=now,
                active_ms=time.active_ms,
                standby_ms=time.standby_ms,
                input_tokens=0,
                cached_input_tokens=0,
                output_tokens=0,
                service_tier=None,
                status="estimated" if estimated else "reported",
                cost_micro_usd=delta,
                price_version=self.prices.version_for(self._price_key),
                estimated=estimated,
                cumulative_micro_usd=cost,
            )
        ]

    def _book_tokens(
        self, kind: str, usage_id: str, model: str, tier: str | None, status: str, usage: Mapping[str, Any], now: float
    ) -> LiveUsageRecord:
        input_tokens = _count(usage.get("input_tokens"))
        details = usage.get("input_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
        output_tokens = _count(usage.get("output_tokens"))
        tiered = self.prices.responses_tier_price_for(model, tier)
        cost = token_cost_micro_usd(
            tiered.rates,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            multiplier=tiered.multiplier,
        )
        ident = self.identity
        return LiveUsageRecord(
            session_id=ident.session_id,
            kind=kind,
            usage_id=usage_id,
            tenant_id=ident.tenant_id,
            model=model,
            occurred_at=now,
            active_ms=0,
            standby_ms=0,
            input_tokens=input_tokens,
            cached_input_tokens=min(cached, input_tokens),
            output_tokens=output_tokens,
            service_tier=tier,
            status=status,
            cost_micro_usd=cost,
            price_version=tiered.version,
        )


def _number(value: object) -> bool:
    # NaN fails both comparisons; a year of seconds is far above any session.
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 31_536_000


def _ms(seconds: Any) -> int:
    return round(float(seconds) * 1000)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
