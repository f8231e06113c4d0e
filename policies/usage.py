"""Token and duration usage as upstream reports it, parsed defensively.

Parsing never raises: upstream payloads are untrusted, and a usage block we cannot read must
still produce a row in the ledger. Where the breakdown is missing or inconsistent, the
rules below choose the reading that never under-bills.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Literal

# User audio is tokenized at one token per 100 ms (protocol reference, section 6).
AUDIO_MS_PER_INPUT_TOKEN = 100


@dataclass(frozen=True, slots=True)
class ResponseUsage:
    """The `usage` of one `response.done`.

    `input_tokens`, `output_tokens` and `total_tokens` are kept as reported. The per-modality
    counts are what gets priced; the `cached_*` counts are subsets of their modality.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_image: int = 0
    output_text: int = 0
    output_audio: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_count(value):
                raise ValueError(f"ResponseUsage.{f.name} must be a non-negative int, got {value!r}")
        for cached, parent in (
            ("cached_text", "input_text"),
            ("cached_audio", "input_audio"),
            ("cached_image", "input_image"),
        ):
            if getattr(self, cached) > getattr(self, parent):
                raise ValueError(f"ResponseUsage.{cached} exceeds {parent}")

    @property
    def uncached_text(self) -> int:
        return max(0, self.input_text - self.cached_text)

    @property
    def uncached_audio(self) -> int:
        return max(0, self.input_audio - self.cached_audio)

    @property
    def uncached_image(self) -> int:
        return max(0, self.input_image - self.cached_image)

    def __add__(self, other: ResponseUsage) -> ResponseUsage:
        """Field-wise sum, e.g. a session total over its responses."""
        if not isinstance(other, ResponseUsage):
            return NotImplemented
        return ResponseUsage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class TranscriptionUsage:
    """The `usage` of one `conversation.item.input_audio_transcription.completed`.

    `kind == "tokens"` fills the token counts and leaves `duration_ms` at 0;
    `kind == "duration"` fills `duration_ms` and leaves the token counts at 0.
    """

    kind: Literal["tokens", "duration"]
    input_text: int = 0
    input_audio: int = 0
    output_tokens: int = 0
    duration_ms: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("tokens", "duration"):
            raise ValueError(f"TranscriptionUsage.kind must be 'tokens' or 'duration', got {self.kind!r}")
        for name in ("input_text", "input_audio", "output_tokens", "duration_ms"):
            value = getattr(self, name)
            if not _is_count(value):
                raise ValueError(f"TranscriptionUsage.{name} must be a non-negative int, got {value!r}")


def parse_response_usage(usage: object) -> ResponseUsage:
    """Read `response.usage` from a `response.done` event. Never raises.

    Rules, each chosen so that a malformed block is never billed below what it reports:

    1. A count that is missing, `None`, not an `int` (a `bool` or a float included) or
       negative reads as 0. Anything that is not a mapping reads as all zeros.
    2. Input: `input_token_details.{text,audio,image}_tokens` are taken as given. Any part of
       `input_tokens` they leave unexplained (all of it, when the details are missing) is
       counted as audio, the most expensive input rate in every published table.
    3. Output: likewise, `output_tokens` beyond `output_token_details.{text,audio}_tokens`
       is counted as audio.
    4. Cached input: `cached_tokens_details.{text,audio,image}_tokens`, each clamped to its
       own modality's count. If the details are absent but `cached_tokens` is present, the
       cached total is assigned text first, then image, then audio (each up to its
       modality's count): that order grants the smallest discount in every published table.
       A cached count that cannot be attributed earns no discount.
    5. `input_tokens`, `output_tokens` and `total_tokens` are stored as reported (after
       rule 1); they are informational and never priced.
    """
    block = usage if isinstance(usage, Mapping) else {}
    input_tokens = _count(block.get("input_tokens"))
    output_tokens = _count(block.get("output_tokens"))
    total_tokens = _count(block.get("total_tokens"))

    in_details = _mapping(block.get("input_token_details"))
    text = _count(in_details.get("text_tokens"))
    audio = _count(in_details.get("audio_tokens"))
    image = _count(in_details.get("image_tokens"))
    audio += max(0, input_tokens - (text + audio + image))

    cached_details = in_details.get("cached_tokens_details")
    if isinstance(cached_details, Mapping):
        cached_text = min(_count(cached_details.get("text_tokens")), text)
        cached_audio = min(_count(cached_details.get("audio_tokens")), audio)
        cached_image = min(_count(cached_details.get("image_tokens")), image)
    else:
        left = _count(in_details.get("cached_tokens"))
        cached_text = min(left, text)
        left -= cached_text
        cached_image = min(left, image)
        left -= cached_image
        cached_audio = min(left, audio)

    out_details = _mapping(block.get("output_token_details"))
    out_text = _count(out_details.get("text_tokens"))
    out_audio = _count(out_details.get("audio_tokens"))
    out_audio += max(0, output_tokens - (out_text + out_audio))

    return ResponseUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        input_text=text,
        input_audio=audio,
        input_image=image,
        cached_text=cached_text,
        cached_audio=cached_audio,
        cached_image=cached_image,
        output_text=out_text,
        output_audio=out_audio,
    )


def parse_transcription_usage(usage: object) -> TranscriptionUsage | None:
    """Read the `usage` of a completed input transcription. Never raises.

    Returns None when there is nothing billable to read: not a mapping, an unknown `type`,
    or none of the expected fields usable. A missing `type` is inferred from the fields.

    - `type: "tokens"`: `input_token_details.{text,audio}_tokens` as given; any part of
      `input_tokens` they leave unexplained is counted as audio (the dearer input rate).
      `output_tokens` as given. Counts follow `parse_response_usage` rule 1.
    - `type: "duration"`: `seconds` (a finite, non-negative number) becomes `duration_ms`,
      rounded UP to the next whole millisecond. The number is read through its shortest
      decimal form, so `2.4` is 2400 ms, not 2401.
    """
    if not isinstance(usage, Mapping):
        return None
    kind = usage.get("type")
    if kind is None:
        kind = "duration" if "seconds" in usage else "tokens"

    if kind == "duration":
        duration_ms = _seconds_to_ms_ceil(usage.get("seconds"))
        return None if duration_ms is None else TranscriptionUsage(kind="duration", duration_ms=duration_ms)

    if kind != "tokens":
        return None
    details = _mapping(usage.get("input_token_details"))
    raw = (
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        details.get("text_tokens"),
        details.get("audio_tokens"),
    )
    if not any(_is_count(value) for value in raw):
        return None
    input_tokens, output_tokens, text, audio = (_count(value) for value in raw)
    audio += max(0, input_tokens - (text + audio))
    return TranscriptionUsage(kind="tokens", input_text=text, input_audio=audio, output_tokens=output_tokens)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _seconds_to_ms_ceil(seconds: object) -> int | None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if isinstance(seconds, float) and not math.isfinite(seconds):
        return None
    if seconds < 0:
        return None
    # repr() gives the shortest decimal that round-trips, i.e. what was on the wire.
    exact = Fraction(seconds) if isinstance(seconds, int) else Fraction(repr(seconds))
    return math.ceil(exact * 1000)
