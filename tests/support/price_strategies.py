"""Hypothesis strategies and the exact reference rounding the pricing tests share."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import strategies as st

from policies.prices.rates import DurationPrice, ModelPrice, TokenPrice
from policies.usage import ResponseUsage


def half_up(micro: Fraction) -> int:
    """The reference rounding: floor(x + 1/2) for x >= 0, in exact rationals."""
    return int(micro + Fraction(1, 2))


counts = st.integers(min_value=0, max_value=10**7)
rates = st.integers(min_value=0, max_value=200_000_000)
per_minute_rates = st.integers(min_value=0, max_value=10_000_000)
milliseconds = st.integers(min_value=0, max_value=48 * 3_600_000)
model_prices = st.builds(ModelPrice, *[rates] * 8)
duration_prices = st.builds(DurationPrice, per_minute_rates, st.none() | per_minute_rates)
token_prices = st.builds(TokenPrice, rates, rates, rates)


@st.composite
def usages(draw: st.DrawFn) -> ResponseUsage:
    """A valid usage built from its eight priced buckets."""
    b = [draw(counts) for _ in range(8)]
    text, audio, image = b[0] + b[1], b[2] + b[3], b[4] + b[5]
    return ResponseUsage(
        input_tokens=text + audio + image,
        output_tokens=b[6] + b[7],
        total_tokens=text + audio + image + b[6] + b[7],
        input_text=text,
        cached_text=b[1],
        input_audio=audio,
        cached_audio=b[3],
        input_image=image,
        cached_image=b[5],
        output_text=b[6],
        output_audio=b[7],
    )
