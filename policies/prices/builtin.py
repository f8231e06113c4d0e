"""The price tables voxgate ships, one per version: data only (the arithmetic is `policies.pricing`).

Every ledger row carries the version of the table that priced it, so a version, once
released, never changes: a new price is a new version, and the older ones stay here so a
historic row's version still names the prices it was computed with. docs/pricing.md
publishes these tables with their sources; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from policies.prices.rates import STANDARD, DurationPrice, ModelPrice, TierMultiplier, TranscriptionPrice
from policies.prices.table import PriceTable
from policies.pricing import usd_to_micro


def _usd(value: str) -> int:
    return usd_to_micro(value, "built-in price table")


def _realtime(text: tuple[str, str, str], audio: tuple[str, str, str], image: tuple[str, str]) -> ModelPrice:
    """Rates in the order of the pricing page: (in, cached in, out) per modality, USD per 1M tokens."""
    return ModelPrice(
        text_in=_usd(text[0]),
        cached_text_in=_usd(text[1]),
        text_out=_usd(text[2]),
        audio_in=_usd(audio[0]),
        cached_audio_in=_usd(audio[1]),
        audio_out=_usd(audio[2]),
        image_in=_usd(image[0]),
        cached_image_in=_usd(image[1]),
    )


def _transcription(text_in: str, audio_in: str, text_out: str) -> TranscriptionPrice:
    return TranscriptionPrice(text_in=_usd(text_in), audio_in=_usd(audio_in), text_out=_usd(text_out))


def _per_minute(active: str, standby: str | None = None) -> DurationPrice:
    return DurationPrice(per_minute=_usd(active), standby_per_minute=None if standby is None else _usd(standby))


_GPT_REALTIME = _realtime(("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00"), ("5.00", "0.50"))
_GPT_REALTIME_2 = _realtime(("4.00", "0.40", "24.00"), ("32.00", "0.40", "64.00"), ("5.00", "0.50"))
_GPT_REALTIME_MINI = _realtime(("0.60", "0.06", "2.40"), ("10.00", "0.30", "20.00"), ("0.80", "0.08"))
_GPT_4O_TRANSCRIBE = _transcription("2.50", "6.00", "10.00")

# Realtime models, USD per 1M tokens. Unverified against the live pricing page.
_REALTIME_2026_11_24: Final = {
    # GA launch post 2025-08-28 (audio); text/image from third-party tables. Mostly certain.
    "gpt-realtime": _GPT_REALTIME,
    # developers.openai.com model page, crawled 2026. Certain.
    "gpt-realtime-1.5": _GPT_REALTIME,
    # Model page; audio confirmed by the 2026-05-07 launch post. Certain.
    "gpt-realtime-2": _GPT_REALTIME_2,
    # Model page lists the same prices as gpt-realtime-2. Certain.
    "gpt-realtime-2.1": _GPT_REALTIME_2,
    # Text-in from the 2.1-mini page's comparison; the rest third-party. Uncertain.
    "gpt-realtime-mini": _GPT_REALTIME_MINI,
    # developers.openai.com model page, 2026. Certain.
    "gpt-realtime-2.1-mini": _GPT_REALTIME_MINI,
    # Legacy; from public pricing, uncertain. No image input: image priced at text rates.
    "gpt-4o-realtime-preview": _realtime(("5.00", "2.50", "20.00"), ("40.00", "2.50", "80.00"), ("5.00", "2.50")),
    # Legacy; from public pricing, uncertain. No image input: image priced at text rates.
    "gpt-4o-mini-realtime-preview": _realtime(("0.60", "0.30", "2.40"), ("10.00", "0.30", "20.00"), ("0.60", "0.30")),
}

# Transcription models priced by the token: text in, audio in, text out per 1M.
_TRANSCRIPTION_2026_11_24: Final = {
    # Public pricing page. Uncertain.
    "gpt-4o-transcribe": _GPT_4O_TRANSCRIBE,
    # Public pricing page. Uncertain.
    "gpt-4o-mini-transcribe": _transcription("1.25", "3.00", "5.00"),
    # Assumed equal to gpt-4o-transcribe. Uncertain.
    "gpt-4o-transcribe-diarize": _GPT_4O_TRANSCRIBE,
}

# Models priced by the minute (of audio, or of session time), USD per minute.
_PER_MINUTE_2026_11_24: Final = {
    # Public pricing page, $0.006/min. Mostly certain.
    "whisper-1": _per_minute("0.006"),
    # OpenAI launch post 2026-05-07, $0.017/min. Certain.
    "gpt-realtime-whisper": _per_minute("0.017"),
}

TABLE_2026_11_24: Final = PriceTable(
    version="2026-11-24",
    models=_REALTIME_2026_11_24,
    transcription=_TRANSCRIPTION_2026_11_24,
    durations=_PER_MINUTE_2026_11_24,
)

# Responses service tiers (GPT-Live's delegated backend) as multiples of a model's standard
# rates. A third-party post gives flex x0.5 and priority / the fast tiers x2; OpenAI's pricing
# page lists per-model tier prices, which a price file can set per model. `auto` is billed as
# the tier the response reports. Uncertain; the fast tiers assumed priced like priority.
_SERVICE_TIERS_2026_12_06: Final = {
    "auto": STANDARD,
    "default": STANDARD,
    "flex": TierMultiplier(1, 2),
    "priority": TierMultiplier(2, 1),
    "fast_tier_temp_pilot": TierMultiplier(2, 1),
    "ultrafast": TierMultiplier(2, 1),
}

# 2026-12-06: GPT-Live, Realtime translation and gpt-live-transcribe; every older price unchanged.
TABLE_2026_12_06: Final = PriceTable(
    version="2026-12-06",
    service_tiers=_SERVICE_TIERS_2026_12_06,
    models=_REALTIME_2026_11_24,
    transcription=_TRANSCRIPTION_2026_11_24,
    durations={
        **_PER_MINUTE_2026_11_24,
        # Model page, $0.017/min. Certain.
        "gpt-live-transcribe": _per_minute("0.017"),
        # Model page, $0.034/min of appended audio. Certain.
        "gpt-realtime-translate": _per_minute("0.034"),
        # Model page $0.05/min billed by the second; standby assumed equal to gpt-live-1.1's
        # (a third-party table gives the two the same price). Active certain, standby uncertain.
        "gpt-live-1": _per_minute("0.05", "0.02"),
        # Model page: $0.05/min active, $0.02/min while inference is paused (WebRTC). Certain.
        "gpt-live-1.1": _per_minute("0.05", "0.02"),
    },
)

# Every version voxgate has shipped, by version: what a ledger row's `price_version` names.
BUILTIN_TABLES: Final[Mapping[str, PriceTable]] = MappingProxyType(
    {table.version: table for table in (TABLE_2026_11_24, TABLE_2026_12_06)}
)
# The newest: what a session is priced with unless an operator's price file overrides it.
DEFAULT_PRICE_TABLE: Final = TABLE_2026_12_06
