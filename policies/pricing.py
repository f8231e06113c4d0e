"""The arithmetic of money: exact integer costs in micro-USD, rounded once, half up.

Rates are integer micro-USD per 1M tokens (so $4.00 / 1M tokens is `4_000_000`) or per
minute (so $0.05 / min is `50_000`). Every cost is one exact integer numerator divided once
by its denominator, rounding half up: no float and no intermediate rounding ever touch
money. The rates themselves are data (`policies.prices`); docs/pricing.md states the rules.
"""

from __future__ import annotations

import re
from typing import Final

from policies.prices.rates import STANDARD, DurationPrice, ModelPrice, TierMultiplier, TokenPrice, TranscriptionPrice
from policies.usage import AUDIO_MS_PER_INPUT_TOKEN, ResponseUsage, TranscriptionUsage

MICRO_PER_USD: Final = 1_000_000
TOKENS_PER_RATE: Final = 1_000_000
MS_PER_MINUTE: Final = 60_000

_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?")


def cost_micro_usd(usage: ResponseUsage, price: ModelPrice) -> int:
    """The cost of one realtime response, micro-USD.

    Sums tokens x rate over the eight buckets (uncached and cached text, audio and image
    input; text and audio output), then divides by 1M once, rounding half up.
    """
    total = (
        usage.uncached_text * price.text_in
        + usage.cached_text * price.cached_text_in
        + usage.uncached_audio * price.audio_in
        + usage.cached_audio * price.cached_audio_in
        + usage.uncached_image * price.image_in
        + usage.cached_image * price.cached_image_in
        + usage.output_text * price.text_out
        + usage.output_audio * price.audio_out
    )
    return div_round_half_up(total, TOKENS_PER_RATE)


def transcription_cost_micro_usd(usage: TranscriptionUsage, price: TranscriptionPrice) -> int:
    """The cost of one transcription, micro-USD, rounded half up.

    Token usage is priced at the token rates; duration usage at `per_minute` pro rata to the
    millisecond. When the usage kind and the price basis differ, audio converts at the
    input-audio token rate (1 token per 100 ms): duration becomes ceil(ms / 100) audio tokens,
    and audio tokens become 100 ms each. A duration has no text, so its output is not billed.
    """
    if usage.kind == "tokens":
        if price.text_in is not None and price.audio_in is not None and price.text_out is not None:
            total = usage.input_text * price.text_in + usage.input_audio * price.audio_in
            total += usage.output_tokens * price.text_out
            return div_round_half_up(total, TOKENS_PER_RATE)
        assert price.per_minute is not None  # guaranteed by TranscriptionPrice
        duration_ms = usage.input_audio * AUDIO_MS_PER_INPUT_TOKEN
        return div_round_half_up(duration_ms * price.per_minute, MS_PER_MINUTE)
    if price.per_minute is not None:
        return div_round_half_up(usage.duration_ms * price.per_minute, MS_PER_MINUTE)
    assert price.audio_in is not None  # guaranteed by TranscriptionPrice
    audio_tokens = -(-usage.duration_ms // AUDIO_MS_PER_INPUT_TOKEN)
    return div_round_half_up(audio_tokens * price.audio_in, TOKENS_PER_RATE)


def token_cost_micro_usd(
    price: TokenPrice,
    *,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    multiplier: TierMultiplier = STANDARD,
) -> int:
    """The cost of one Responses call (a Live delegation, a Decision), micro-USD, rounded half up.

    `input_tokens` includes the cached ones, as the Responses API reports them; a cached
    count above the input count is capped at it (the smaller discount). `multiplier` is the
    call's service tier as a multiple of `price` (a `TieredPrice`'s), applied before the one
    rounding.
    """
    _require_counts(input_tokens=input_tokens, cached_input_tokens=cached_input_tokens, output_tokens=output_tokens)
    cached = min(cached_input_tokens, input_tokens)
    total = (input_tokens - cached) * price.text_in + cached * price.cached_text_in + output_tokens * price.text_out
    return div_round_half_up(total * multiplier.numerator, TOKENS_PER_RATE * multiplier.denominator)


def duration_cost_micro_usd(price: DurationPrice, *, active_ms: int, standby_ms: int = 0) -> int:
    """The cost of a stretch of session time, micro-USD: active and standby milliseconds at
    their per-minute rates, summed exactly and divided by 60,000 once, rounding half up.

    $0.05 / min is 833 1/3 micro-USD a second, so rounding per second or per usage event
    would drift; price the session's cumulative time and book the difference from what is
    already booked, and the session's total is rounded exactly once.
    """
    _require_counts(active_ms=active_ms, standby_ms=standby_ms)
    total = active_ms * price.per_minute + standby_ms * price.standby_rate
    return div_round_half_up(total, MS_PER_MINUTE)


def div_round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` to the nearest integer, halves up (both non-negative)."""
    # Floor division of (n + d/2) by d, kept in integers by doubling both.
    return (2 * numerator + denominator) // (2 * denominator)


def usd_to_micro(value: object, where: str) -> int:
    """Exact micro-USD from a USD amount given as a decimal string (`"4.00"`) or an int.

    Floats are refused (they are not exact, and `0.1` in YAML is one); so are negatives,
    exponents and anything finer than one micro-USD. Errors name `where`.
    """
    if isinstance(value, float):
        raise ValueError(f'{where}: {value!r} is a float, which is not exact; quote it as a string ("{value}")')
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{where}: expected a decimal string such as "4.00", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: must not be negative, got {value!r}")
        return value * MICRO_PER_USD
    match = _DECIMAL.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{where}: not a non-negative decimal number: {value!r}")
    whole, frac = match.group(1), (match.group(2) or "").rstrip("0")
    if len(frac) > 6:
        raise ValueError(f"{where}: finer than one micro-USD: {value!r}")
    return int(whole) * MICRO_PER_USD + int(frac.ljust(6, "0"))


def micro_to_usd(value: int) -> str:
    """The exact decimal USD string for a micro-USD amount, at least two decimals."""
    whole, frac = divmod(value, MICRO_PER_USD)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}"


def _require_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
