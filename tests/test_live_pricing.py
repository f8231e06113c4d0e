"""GPT-Live's prices: session time at active and standby rates, and delegated Responses tokens.

Expected micro-USD values are worked out by hand in the comments beside them; the property
tests check the arithmetic against an independent exact computation with `Fraction`.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import DurationPrice, TokenPrice
from policies.pricing import duration_cost_micro_usd, token_cost_micro_usd
from tests.support.price_strategies import counts, duration_prices, half_up, milliseconds, token_prices

# -- session time (GPT-Live, translation) -------------------------------------------------------


def test_a_live_session_costs_active_and_standby_time_at_their_rates() -> None:
    live, key = DEFAULT_PRICE_TABLE.duration_price_for("gpt-live-1.1")
    assert (key, live) == ("gpt-live-1.1", DurationPrice(per_minute=50_000, standby_per_minute=20_000))
    # The protocol reference's example: (107 s x 50_000 + 25 s x 20_000) / 60 = 97_500 micro-USD ($0.0975).
    assert duration_cost_micro_usd(live, active_ms=107_000, standby_ms=25_000) == 97_500
    # One second is 833 1/3 micro-USD: rounded once, down; three seconds are exactly 2_500.
    assert duration_cost_micro_usd(live, active_ms=1_000) == 833
    assert duration_cost_micro_usd(live, active_ms=3_000) == 2_500
    # 3 ms x 50_000 / 60_000 = 2.5 -> 3 (half up); 1 ms = 0.833.. -> 1; 0 ms -> 0.
    assert duration_cost_micro_usd(live, active_ms=3) == 3
    assert duration_cost_micro_usd(live, active_ms=1) == 1
    assert duration_cost_micro_usd(live, active_ms=0, standby_ms=0) == 0


def test_gpt_live_1_has_the_same_rates_as_gpt_live_1_1() -> None:
    assert DEFAULT_PRICE_TABLE.durations["gpt-live-1"] == DEFAULT_PRICE_TABLE.durations["gpt-live-1.1"]


def test_translation_is_billed_by_the_minute_and_paused_time_at_the_same_rate() -> None:
    translate, _ = DEFAULT_PRICE_TABLE.duration_price_for("gpt-realtime-translate")
    assert translate == DurationPrice(per_minute=34_000)
    assert duration_cost_micro_usd(translate, active_ms=60_000) == 34_000
    # 1 s = 566.67 -> 567; no standby rate: paused time costs the same.
    assert duration_cost_micro_usd(translate, active_ms=1_000) == 567
    assert duration_cost_micro_usd(translate, active_ms=0, standby_ms=1_000) == 567


@given(duration_prices, milliseconds, milliseconds)
def test_duration_cost_is_exact(price: DurationPrice, active: int, standby: int) -> None:
    standby_rate = price.per_minute if price.standby_per_minute is None else price.standby_per_minute
    exact = Fraction(active * price.per_minute + standby * standby_rate, 60_000)
    assert duration_cost_micro_usd(price, active_ms=active, standby_ms=standby) == half_up(exact)


@given(duration_prices, st.lists(st.tuples(milliseconds, milliseconds), min_size=1, max_size=20))
def test_booking_the_cumulative_cost_rounds_a_session_once(
    price: DurationPrice, stretches: list[tuple[int, int]]
) -> None:
    # Live reports cumulative time; voxgate books cost(total so far) - cost(booked before).
    booked, active, standby, deltas = 0, 0, 0, []
    for extra_active, extra_standby in stretches:
        active, standby = active + extra_active, standby + extra_standby
        now = duration_cost_micro_usd(price, active_ms=active, standby_ms=standby)
        deltas.append(now - booked)
        booked = now
    assert min(deltas) >= 0  # time never costs less for lasting longer
    assert sum(deltas) == duration_cost_micro_usd(price, active_ms=active, standby_ms=standby)
    # Rounding each stretch on its own instead drifts by up to half a micro-USD per stretch.
    separately = sum(duration_cost_micro_usd(price, active_ms=a, standby_ms=s) for a, s in stretches)
    assert abs(separately - sum(deltas)) <= (len(stretches) + 1) / 2


def test_durations_are_checked() -> None:
    with pytest.raises(ValueError, match="active_ms"):
        duration_cost_micro_usd(DurationPrice(50_000), active_ms=-1)
    with pytest.raises(ValueError, match="active_ms"):
        duration_cost_micro_usd(DurationPrice(50_000), active_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="standby_per_minute"):
        DurationPrice(50_000, -1)


# -- Responses tokens (Live delegation, Decisions) ----------------------------------------------


def test_delegated_responses_usage_costs_what_the_hand_computation_says() -> None:
    price = TokenPrice(text_in=1_250_000, cached_text_in=125_000, text_out=10_000_000)  # $1.25 / $0.125 / $10 per 1M
    # The protocol reference's response.completed: 1840 in (1536 cached), 212 out (96 of them reasoning).
    #   uncached  304 x  1_250_000 =   380_000_000
    #   cached   1536 x    125_000 =   192_000_000
    #   output    212 x 10_000_000 = 2_120_000_000
    #   sum                        = 2_692_000_000 -> 2_692 micro-USD
    assert token_cost_micro_usd(price, input_tokens=1840, cached_input_tokens=1536, output_tokens=212) == 2692
    # A cached count above the input is capped at it: 10 x 125_000 = 1_250_000 -> 1.25 -> 1.
    assert token_cost_micro_usd(price, input_tokens=10, cached_input_tokens=50, output_tokens=0) == 1


@given(token_prices, counts, counts, counts)
def test_token_cost_is_exact(price: TokenPrice, inputs: int, cached: int, outputs: int) -> None:
    hit = min(cached, inputs)
    exact = Fraction((inputs - hit) * price.text_in + hit * price.cached_text_in + outputs * price.text_out, 1_000_000)
    assert token_cost_micro_usd(price, input_tokens=inputs, cached_input_tokens=cached, output_tokens=outputs) == (
        half_up(exact)
    )
