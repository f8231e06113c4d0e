"""The metering feed of one session: what upstream reported and billed, priced once each.

`SessionMeter` turns the server events that carry money or configuration into ledger
records (a `response.done`'s usage, an input transcription, a `rate_limits.updated`, the
session's model and voice) and keeps the running totals and the context estimate that
budget reservations are priced from. It never decides anything: the governor does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.actions import RateLimitsRecord, SessionInfoRecord, TranscriptionRecord, UsageRecord
from policies.budget import B64_CHARS_PER_AUDIO_TOKEN, item_token_estimate
from policies.metering import rate_limits_record, read_session_config, transcription_record, usage_record
from policies.prices.table import PriceTable
from policies.pricing import transcription_cost_micro_usd
from policies.transcription_backstop import AudioBackstop, duration_ms, input_bytes_per_second
from policies.usage import TranscriptionUsage

BACKSTOP_ITEM_ID = "backstop"  # the item id of a session's one backstop row


@dataclass(frozen=True, slots=True)
class SessionIdentity:
    """Who a session belongs to, fixed at admission."""

    session_id: str
    tenant_id: str
    model: str
    intent: str = "realtime"
    # Which holding of the session this governor is (a replica that takes a WebRTC call over gets its
    # own): it scopes the governor's reservation ids, which must never repeat ids an earlier holder
    # reserved and settled (a settled id is refused when reserved again, and adds nothing when settled).
    holder: str = ""


@dataclass(slots=True)
class SessionTotals:
    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    transcription_cost_micro_usd: int = 0


class SessionMeter:
    """Prices what one session's upstream bills, exactly once per response and transcription."""

    def __init__(self, identity: SessionIdentity, prices: PriceTable) -> None:
        self.identity = identity
        self.prices = prices
        self.model = identity.model
        self.voice: str | None = None
        self.transcription_model: str | None = None
        self.upstream_session_id: str | None = None
        self.totals = SessionTotals()
        self.transcribing: set[str] = set()  # committed input audio items whose transcription is not done
        self._seen_responses: set[str] = set()
        self._seen_transcriptions: set[tuple[str, int]] = set()
        # A transcription session's appended audio, until a completed transcription bills it.
        self.backstop = AudioBackstop() if identity.intent == "transcription" else None
        # The context estimate budget reservations are priced from: the last response's input and
        # output, plus what the client added since (items, audio).
        self.context_tokens = 0
        self.added_tokens = 0

    @property
    def context_estimate(self) -> int:
        return self.context_tokens + self.added_tokens

    def note_audio(self, audio_b64_chars: int) -> None:
        self.added_tokens += -(-audio_b64_chars // B64_CHARS_PER_AUDIO_TOKEN)

    def note_item(self, item: object) -> None:
        self.added_tokens += item_token_estimate(item)

    def knows_response(self, response_id: str) -> bool:
        return response_id in self._seen_responses

    def response_done(self, response: Mapping[str, Any], now: float) -> UsageRecord | None:
        """The usage of a `response.done`, priced; None if unusable or already metered."""
        if not isinstance(response.get("id"), str) or response["id"] in self._seen_responses:
            return None  # not ours to judge (and an unhashable id must not raise)
        identity = self.identity
        priced = usage_record(
            response,
            session_id=identity.session_id,
            tenant_id=identity.tenant_id,
            model=self.model,
            prices=self.prices,
            now=now,
        )
        if priced is None:
            return None
        record, usage = priced
        self._seen_responses.add(record.response_id)
        totals = self.totals
        totals.responses += 1
        totals.input_tokens += usage.input_tokens
        totals.output_tokens += usage.output_tokens
        totals.cost_micro_usd += record.cost_micro_usd
        self.context_tokens, self.added_tokens = usage.input_tokens + usage.output_tokens, 0
        return record

    def committed(self, item_id: object) -> None:
        """Input audio was committed: with transcription on, upstream bills it when it completes."""
        if self.transcription_model is not None and isinstance(item_id, str):
            self.transcribing.add(item_id)
        if self.backstop is not None and isinstance(item_id, str):
            self.backstop.committed(item_id)

    def transcription_failed(self, item_id: object) -> None:
        self.transcribing.discard(str(item_id))

    def transcription(self, event: Mapping[str, Any], now: float) -> TranscriptionRecord | None:
        """A completed input transcription, priced at its ASR model's rates; None if unusable or seen."""
        item_id = str(event.get("item_id"))
        self.transcribing.discard(item_id)
        if self.backstop is not None and self.backstop.billed(item_id):
            return None  # the end's backstop billed this item already
        record = transcription_record(
            event,
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            model=self.transcription_model,
            prices=self.prices,
            now=now,
        )
        if record is None or (record.item_id, record.content_index) in self._seen_transcriptions:
            return None
        self._seen_transcriptions.add((record.item_id, record.content_index))
        if self.backstop is not None:
            self.backstop.transcribed(record.item_id)
        self.totals.transcription_cost_micro_usd += record.cost_micro_usd
        return record

    def rate_limits(self, event: Mapping[str, Any], now: float) -> RateLimitsRecord | None:
        return rate_limits_record(
            event, session_id=self.identity.session_id, tenant_id=self.identity.tenant_id, now=now
        )

    def session_info(self, session: Mapping[str, Any]) -> SessionInfoRecord:
        """The effective configuration upstream reported; later prices follow its model."""
        view = read_session_config(session)
        self.model = view.model or self.model
        self.upstream_session_id = view.upstream_session_id or self.upstream_session_id
        self.voice = view.voice or self.voice
        if view.transcription_model is not None or view.transcription_cleared:
            self.transcription_model = view.transcription_model
        rate = input_bytes_per_second(session) if self.backstop is not None else None
        if self.backstop is not None and rate is not None:
            self.backstop.bytes_per_second = rate
        return SessionInfoRecord(
            session_id=self.identity.session_id,
            model=self.model,
            voice=self.voice,
            upstream_session_id=self.upstream_session_id,
        )

    def backstop_record(self, now: float) -> TranscriptionRecord | None:
        """At the end: the audio no completed transcription billed, by its duration at the
        transcription model's price, marked estimated; None when there is none (or no model)."""
        backstop = self.backstop
        if backstop is None:
            return None
        unbilled = backstop.close()
        model = self.transcription_model
        if unbilled == 0 or model is None:
            return None
        usage = TranscriptionUsage(kind="duration", duration_ms=duration_ms(unbilled, backstop.bytes_per_second))
        price, key = self.prices.transcription_price_for(model)
        record = TranscriptionRecord(
            session_id=self.identity.session_id,
            tenant_id=self.identity.tenant_id,
            item_id=BACKSTOP_ITEM_ID,
            content_index=0,
            model=model,
            occurred_at=now,
            usage_type="duration",
            input_text_tokens=0,
            input_audio_tokens=0,
            output_tokens=0,
            duration_ms=usage.duration_ms,
            cost_micro_usd=transcription_cost_micro_usd(usage, price),
            price_version=self.prices.version_for(key),
            estimated=True,
        )
        self.totals.transcription_cost_micro_usd += record.cost_micro_usd
        return record
