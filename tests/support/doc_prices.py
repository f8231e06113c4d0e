"""docs/pricing.md's default table, typed in by hand: tests price usage with it, never with `policies.pricing`.

An expected cost computed by the code under test proves nothing. This table is the documented
one, independently written down (micro-USD per 1M tokens, or per minute), and `doc_cost` is the
documented formula for well-formed usage: uncached = a modality's count minus its cached count,
the sum of tokens x rate, divided by 1M once, rounded half up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VERSION = "2026-12-06"
PREVIOUS_VERSIONS = ("2026-11-24",)  # still shipped: historic rows keep their meaning

# text_in, cached_text_in, text_out, audio_in, cached_audio_in, audio_out, image_in, cached_image_in
# (the column order of docs/pricing.md's table), micro-USD per 1M tokens.
RATE_NAMES = (
    "text_in",
    "cached_text_in",
    "text_out",
    "audio_in",
    "cached_audio_in",
    "audio_out",
    "image_in",
    "cached_image_in",
)
MODELS: dict[str, tuple[int, ...]] = {
    "gpt-realtime": (4_000_000, 400_000, 16_000_000, 32_000_000, 400_000, 64_000_000, 5_000_000, 500_000),
    "gpt-realtime-1.5": (4_000_000, 400_000, 16_000_000, 32_000_000, 400_000, 64_000_000, 5_000_000, 500_000),
    "gpt-realtime-2": (4_000_000, 400_000, 24_000_000, 32_000_000, 400_000, 64_000_000, 5_000_000, 500_000),
    "gpt-realtime-2.1": (4_000_000, 400_000, 24_000_000, 32_000_000, 400_000, 64_000_000, 5_000_000, 500_000),
    "gpt-realtime-mini": (600_000, 60_000, 2_400_000, 10_000_000, 300_000, 20_000_000, 800_000, 80_000),
    "gpt-realtime-2.1-mini": (600_000, 60_000, 2_400_000, 10_000_000, 300_000, 20_000_000, 800_000, 80_000),
    # Legacy previews: no published image rate, so image is priced at the text rates (the table's footnote).
    "gpt-4o-realtime-preview": (
        5_000_000,
        2_500_000,
        20_000_000,
        40_000_000,
        2_500_000,
        80_000_000,
        5_000_000,
        2_500_000,
    ),
    "gpt-4o-mini-realtime-preview": (600_000, 300_000, 2_400_000, 10_000_000, 300_000, 20_000_000, 600_000, 300_000),
}

# Transcription priced by the token: text_in, audio_in, text_out, micro-USD per 1M tokens.
TRANSCRIPTION: dict[str, tuple[int, int, int]] = {
    "gpt-4o-transcribe": (2_500_000, 6_000_000, 10_000_000),
    "gpt-4o-mini-transcribe": (1_250_000, 3_000_000, 5_000_000),
    "gpt-4o-transcribe-diarize": (2_500_000, 6_000_000, 10_000_000),
}

# Priced by the minute: (active, standby) micro-USD per minute; standby None where the doc leaves it empty.
PER_MINUTE: dict[str, tuple[int, int | None]] = {
    "whisper-1": (6_000, None),
    "gpt-realtime-whisper": (17_000, None),
    "gpt-live-transcribe": (17_000, None),
    "gpt-realtime-translate": (34_000, None),
    "gpt-live-1": (50_000, 20_000),
    "gpt-live-1.1": (50_000, 20_000),
}
# Added by 2026-12-06; the 2026-11-24 table is the rest.
NEW_IN_2026_12_06 = ("gpt-live-transcribe", "gpt-realtime-translate", "gpt-live-1", "gpt-live-1.1")


# The `response.done` usage of docs/pricing.md's worked example (the protocol reference, section 5).
WORKED_EXAMPLE_USAGE: dict[str, Any] = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def rate(model: str, name: str) -> int:
    return MODELS[model][RATE_NAMES.index(name)]


def doc_cost(usage: Mapping[str, Any], model: str = "gpt-realtime") -> int:
    """A `response.done` usage's cost by the documented formula; the usage must be well formed
    (every token accounted for in the details), so none of the parser's fallbacks apply."""
    details, out = usage["input_token_details"], usage["output_token_details"]
    cached = details.get("cached_tokens_details") or {}
    text, audio, image = details.get("text_tokens", 0), details.get("audio_tokens", 0), details.get("image_tokens", 0)
    assert usage["input_tokens"] == text + audio + image, usage
    assert usage["output_tokens"] == out["text_tokens"] + out["audio_tokens"], usage
    c_text, c_audio, c_image = (cached.get(k, 0) for k in ("text_tokens", "audio_tokens", "image_tokens"))
    assert details.get("cached_tokens", 0) == c_text + c_audio + c_image, usage
    total = (
        (text - c_text) * rate(model, "text_in")
        + c_text * rate(model, "cached_text_in")
        + (audio - c_audio) * rate(model, "audio_in")
        + c_audio * rate(model, "cached_audio_in")
        + (image - c_image) * rate(model, "image_in")
        + c_image * rate(model, "cached_image_in")
        + out["text_tokens"] * rate(model, "text_out")
        + out["audio_tokens"] * rate(model, "audio_out")
    )
    return (total + 500_000) // 1_000_000
