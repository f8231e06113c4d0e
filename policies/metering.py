"""Server events -> ledger records: what a response, a transcription or a rate-limit update costs.

Pure translations, tolerant of malformed input (they return None rather than raise). The
governor decides *when* to record (once per response id, per transcription item); this
module decides *what* the record says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.actions import RateLimit, RateLimitsRecord, TranscriptionRecord, UsageRecord
from policies.prices.table import PriceTable
from policies.pricing import cost_micro_usd, transcription_cost_micro_usd
from policies.usage import ResponseUsage, parse_response_usage, parse_transcription_usage

UNKNOWN_TRANSCRIPTION_MODEL = "unknown-transcription-model"


def as_int(value: object) -> int | None:
    """An integral JSON number as int; None for bools, fractions and non-numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def usage_record(
    response: Mapping[str, Any], *, session_id: str, tenant_id: str, model: str, prices: PriceTable, now: float
) -> tuple[UsageRecord, ResponseUsage] | None:
    """Price a `response.done` response; None when it has no usable id."""
    response_id = response.get("id")
    if not isinstance(response_id, str) or not response_id:
        return None
    usage = parse_response_usage(response.get("usage"))
    price, key = prices.price_for(model)
    status = response.get("status")
    record = UsageRecord(
        response_id=response_id,
        session_id=session_id,
        tenant_id=tenant_id,
        model=model,
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
        cost_micro_usd=cost_micro_usd(usage, price),
        price_version=prices.version_for(key),  # the ceiling's rows are flagged in it
    )
    return record, usage


def rate_limits_record(
    event: Mapping[str, Any], *, session_id: str, tenant_id: str, now: float
) -> RateLimitsRecord | None:
    """The usable entries of a `rate_limits.updated`; None when there are none."""
    raw = event.get("rate_limits")
    limits: list[RateLimit] = []
    if isinstance(raw, list):
        for item in raw:
            if not isinstance(item, Mapping):
                continue
            name, limit = item.get("name"), as_int(item.get("limit"))
            remaining, reset = as_int(item.get("remaining")), item.get("reset_seconds")
            if not isinstance(name, str) or limit is None or remaining is None:
                continue
            reset_s = float(reset) if isinstance(reset, int | float) and not isinstance(reset, bool) else 0.0
            limits.append(RateLimit(name=name, limit=limit, remaining=remaining, reset_seconds=reset_s))
    if not limits:
        return None
    return RateLimitsRecord(session_id=session_id, tenant_id=tenant_id, observed_at=now, limits=tuple(limits))


@dataclass(frozen=True, slots=True)
class SessionConfigView:
    """What metering needs from a `session.created`/`session.updated` session (None = not stated)."""

    model: str | None = None
    upstream_session_id: str | None = None
    voice: str | None = None
    transcription_model: str | None = None
    transcription_cleared: bool = False  # `audio.input.transcription: null` turned it off


def read_session_config(session: Mapping[str, Any]) -> SessionConfigView:
    model = session.get("model")
    sid = session.get("id")
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, Mapping) else None
    audio_out = audio.get("output") if isinstance(audio, Mapping) else None
    voice: str | None = None
    if isinstance(audio_out, Mapping):
        raw_voice = audio_out.get("voice")
        if isinstance(raw_voice, str):
            voice = raw_voice
        elif isinstance(raw_voice, Mapping) and isinstance(raw_voice.get("id"), str):
            voice = str(raw_voice["id"])
    transcription_model: str | None = None
    cleared = False
    if isinstance(audio_in, Mapping):
        transcription = audio_in.get("transcription")
        if isinstance(transcription, Mapping) and isinstance(transcription.get("model"), str):
            transcription_model = str(transcription["model"])
        elif transcription is None and "transcription" in audio_in:
            cleared = True
    return SessionConfigView(
        model=model if isinstance(model, str) and model else None,
        upstream_session_id=sid if isinstance(sid, str) and sid else None,
        voice=voice,
        transcription_model=transcription_model,
        transcription_cleared=cleared,
    )


def transcription_record(
    event: Mapping[str, Any], *, session_id: str, tenant_id: str, model: str | None, prices: PriceTable, now: float
) -> TranscriptionRecord | None:
    """Price an input-audio transcription at its ASR model's rates; None when unusable."""
    item_id = event.get("item_id")
    usage = parse_transcription_usage(event.get("usage"))
    if not isinstance(item_id, str) or usage is None:
        return None
    model = model or UNKNOWN_TRANSCRIPTION_MODEL
    price, key = prices.transcription_price_for(model)
    return TranscriptionRecord(
        session_id=session_id,
        tenant_id=tenant_id,
        item_id=item_id,
        content_index=as_int(event.get("content_index")) or 0,
        model=model,
        occurred_at=now,
        usage_type=usage.kind,
        input_text_tokens=usage.input_text,
        input_audio_tokens=usage.input_audio,
        output_tokens=usage.output_tokens,
        duration_ms=usage.duration_ms,
        cost_micro_usd=transcription_cost_micro_usd(usage, price),
        price_version=prices.version_for(key),
    )
