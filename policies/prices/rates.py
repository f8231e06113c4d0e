"""The rate records of one model, integer micro-USD: per 1M tokens or per minute.

Each kind of model is billed on its own basis, so each has its own record: a realtime model
on eight token buckets, a transcription model on tokens or minutes of audio, a Responses
model (Live delegation, Decisions) on input, cached input and output tokens, and a Live or
translation session on minutes of session time. A Responses call's service tier is priced by
explicit rates or by a `TierMultiplier` of the model's standard ones.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Final


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Rates of one realtime model, micro-USD per 1M tokens."""

    text_in: int
    cached_text_in: int
    text_out: int
    audio_in: int
    cached_audio_in: int
    audio_out: int
    image_in: int
    cached_image_in: int

    def __post_init__(self) -> None:
        _require_rates(self)


@dataclass(frozen=True, slots=True)
class TranscriptionPrice:
    """Rates of one transcription model: per-1M-token rates, a per-minute rate, or both.

    Token rates are all three set or all None; `per_minute` is micro-USD per minute of audio.
    """

    text_in: int | None = None
    audio_in: int | None = None
    text_out: int | None = None
    per_minute: int | None = None

    def __post_init__(self) -> None:
        token_rates = (self.text_in, self.audio_in, self.text_out)
        if any(rate is None for rate in token_rates) and any(rate is not None for rate in token_rates):
            raise ValueError("TranscriptionPrice: text_in, audio_in and text_out are set together or not at all")
        if self.text_in is None and self.per_minute is None:
            raise ValueError("TranscriptionPrice: needs token rates, a per-minute rate, or both")
        _require_rates(self)


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """Rates of one Responses model (a Live session's delegated backend), micro-USD per 1M tokens.

    Reasoning tokens are part of the output count, so they are billed at `text_out`.
    """

    text_in: int
    cached_text_in: int
    text_out: int

    def __post_init__(self) -> None:
        _require_rates(self)


@dataclass(frozen=True, slots=True)
class DurationPrice:
    """Rates of a model billed by time, micro-USD per minute.

    `standby_per_minute` is the rate while inference is paused (GPT-Live over WebRTC); None
    bills paused time at `per_minute`, the dearer reading.
    """

    per_minute: int
    standby_per_minute: int | None = None

    def __post_init__(self) -> None:
        _require_rates(self)

    @property
    def standby_rate(self) -> int:
        """The rate paused time is billed at."""
        return self.per_minute if self.standby_per_minute is None else self.standby_per_minute


@dataclass(frozen=True, slots=True)
class TierMultiplier:
    """A service tier's price as a multiple of a Responses model's standard rates: `numerator /
    denominator`, exact (flex at half is 1/2, priority at double 2/1)."""

    numerator: int
    denominator: int = 1

    def __post_init__(self) -> None:
        _require_rates(self)
        if self.denominator == 0:
            raise ValueError("TierMultiplier.denominator must be positive")

    def __le__(self, other: TierMultiplier) -> bool:
        return self.numerator * other.denominator <= other.numerator * self.denominator


# A tier's price: an explicit set of rates, or a multiple of the model's standard ones.
TierPrice = TokenPrice | TierMultiplier


def _require_rates(record: object) -> None:
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            name = f"{type(record).__name__}.{f.name}"
            raise ValueError(f"{name} must be a non-negative int (micro-USD), got {value!r}")


STANDARD: Final = TierMultiplier(1, 1)  # the `default` tier: the model's own rates
