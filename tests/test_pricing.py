"""Pricing: exact integer costs, the versioned built-in tables, and what an unknown model costs.

Expected micro-USD values are worked out by hand in the comments beside them; the property
tests check the arithmetic against an independent exact computation with `Fraction`.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.prices.builtin import BUILTIN_TABLES, DEFAULT_PRICE_TABLE, TABLE_2026_11_24
from policies.prices.rates import DurationPrice, ModelPrice, TokenPrice, TranscriptionPrice
from policies.prices.table import CEILING_KEY, PriceTable
from policies.pricing import (
    cost_micro_usd,
    transcription_cost_micro_usd,
)
from policies.usage import ResponseUsage, TranscriptionUsage, parse_response_usage, parse_transcription_usage
from tests.support import doc_prices
from tests.support.doc_prices import WORKED_EXAMPLE_USAGE
from tests.support.price_strategies import half_up, model_prices, usages

GPT_REALTIME = DEFAULT_PRICE_TABLE.models["gpt-realtime"]


def exact_cost(usage: ResponseUsage, price: ModelPrice) -> int:
    """The reference computation: exact rational USD, rounded half up to the micro-USD."""
    pairs = (
        (usage.uncached_text, price.text_in),
        (usage.cached_text, price.cached_text_in),
        (usage.uncached_audio, price.audio_in),
        (usage.cached_audio, price.cached_audio_in),
        (usage.uncached_image, price.image_in),
        (usage.cached_image, price.cached_image_in),
        (usage.output_text, price.text_out),
        (usage.output_audio, price.audio_out),
    )
    return half_up(sum((Fraction(tokens * rate, 1_000_000) for tokens, rate in pairs), Fraction(0)))


# -- the built-in tables are the documented ones ------------------------------------------------


def test_the_default_table_is_the_one_docs_pricing_md_publishes() -> None:
    # tests/support/doc_prices.py is docs/pricing.md's table typed in by hand, not read from the code.
    table = DEFAULT_PRICE_TABLE
    assert table.version == doc_prices.VERSION
    assert sorted(table.models) == sorted(doc_prices.MODELS)
    for model, rates in doc_prices.MODELS.items():
        assert tuple(getattr(table.models[model], name) for name in doc_prices.RATE_NAMES) == rates, model
    assert sorted(table.transcription) == sorted(doc_prices.TRANSCRIPTION)
    for model, (text_in, audio_in, text_out) in doc_prices.TRANSCRIPTION.items():
        assert table.transcription[model] == TranscriptionPrice(text_in, audio_in, text_out), model
    assert sorted(table.durations) == sorted(doc_prices.PER_MINUTE)
    for model, (active, standby) in doc_prices.PER_MINUTE.items():
        assert table.durations[model] == DurationPrice(active, standby), model
    assert dict(table.responses) == {} and dict(table.model_versions) == {}
    assert table.unknown_models == "refuse"


def test_older_versions_are_still_shipped_with_their_own_prices() -> None:
    assert sorted(BUILTIN_TABLES) == sorted((*doc_prices.PREVIOUS_VERSIONS, doc_prices.VERSION))
    assert BUILTIN_TABLES[doc_prices.VERSION] is DEFAULT_PRICE_TABLE
    old = BUILTIN_TABLES["2026-11-24"]
    assert old is TABLE_2026_11_24 and old.version == "2026-11-24"
    # 2026-12-06 only added models: every price of 2026-11-24 is unchanged.
    assert old.models == DEFAULT_PRICE_TABLE.models and old.transcription == DEFAULT_PRICE_TABLE.transcription
    assert sorted(old.durations) == sorted(set(doc_prices.PER_MINUTE) - set(doc_prices.NEW_IN_2026_12_06))
    assert not old.transcription_is_known("gpt-live-transcribe")
    assert old.duration_price_for("gpt-live-1")[1] == CEILING_KEY


def test_the_independent_formula_agrees_on_the_worked_example() -> None:
    # The e2e tests price what the emulator reports with doc_prices.doc_cost; it must give the
    # docs' worked example (6_966, by hand in the test below) for the reference usage.
    assert doc_prices.doc_cost(WORKED_EXAMPLE_USAGE) == 6966
    # gpt-realtime-mini: 55 x 600_000 + 64 x 60_000 + 13 x 10_000_000 + 30 x 2_400_000 + 91 x 20_000_000
    #                    = 2_058_840_000 -> 2_059
    assert doc_prices.doc_cost(WORKED_EXAMPLE_USAGE, "gpt-realtime-mini") == 2059
    mini = DEFAULT_PRICE_TABLE.models["gpt-realtime-mini"]
    assert cost_micro_usd(parse_response_usage(WORKED_EXAMPLE_USAGE), mini) == 2059


def test_gpt_realtime_2_and_2_1_cost_more_for_text_output() -> None:
    models = DEFAULT_PRICE_TABLE.models
    assert models["gpt-realtime-2"] == models["gpt-realtime-2.1"]
    assert models["gpt-realtime-2"].text_out == 24_000_000
    assert models["gpt-realtime"].text_out == 16_000_000


# -- realtime responses -------------------------------------------------------------------------


def test_reference_usage_costs_what_the_hand_computation_says() -> None:
    # gpt-realtime, micro-USD per 1M tokens:
    #   uncached text   55 x  4_000_000 =   220_000_000
    #   cached text     64 x    400_000 =    25_600_000
    #   uncached audio  13 x 32_000_000 =   416_000_000
    #   output text     30 x 16_000_000 =   480_000_000
    #   output audio    91 x 64_000_000 = 5_824_000_000
    #   sum                             = 6_965_600_000  -> / 1M = 6965.6 -> 6966 micro-USD
    assert cost_micro_usd(parse_response_usage(WORKED_EXAMPLE_USAGE), GPT_REALTIME) == 6966


@given(usages(), model_prices)
def test_cost_is_exact(usage: ResponseUsage, price: ModelPrice) -> None:
    assert cost_micro_usd(usage, price) == exact_cost(usage, price)


@given(model_prices)
def test_zero_usage_costs_nothing(price: ModelPrice) -> None:
    assert cost_micro_usd(ResponseUsage(), price) == 0


BUCKETS = (
    ("input_text", None),
    ("input_text", "cached_text"),
    ("input_audio", None),
    ("input_audio", "cached_audio"),
    ("input_image", None),
    ("input_image", "cached_image"),
    ("output_text", None),
    ("output_audio", None),
)


@given(usages(), model_prices, st.sampled_from(BUCKETS), st.integers(min_value=1, max_value=10**6))
def test_cost_never_decreases_when_any_bucket_grows(
    usage: ResponseUsage, price: ModelPrice, bucket: tuple[str, str | None], extra: int
) -> None:
    parent, cached = bucket
    changes = {parent: getattr(usage, parent) + extra}
    if cached is not None:
        changes[cached] = getattr(usage, cached) + extra
    assert cost_micro_usd(replace(usage, **changes), price) >= cost_micro_usd(usage, price)


@given(usages(), usages(), model_prices)
def test_rounding_per_response_drifts_at_most_one_micro_usd_per_pair(
    a: ResponseUsage, b: ResponseUsage, price: ModelPrice
) -> None:
    assert abs(cost_micro_usd(a, price) + cost_micro_usd(b, price) - cost_micro_usd(a + b, price)) <= 1


def test_half_a_micro_usd_rounds_up() -> None:
    price = replace(GPT_REALTIME, text_in=1)
    assert cost_micro_usd(ResponseUsage(input_text=500_000), price) == 1
    assert cost_micro_usd(ResponseUsage(input_text=499_999), price) == 0


# -- transcription ------------------------------------------------------------------------------


def test_token_transcription_usage_from_the_reference() -> None:
    raw = {
        "type": "tokens",
        "total_tokens": 26,
        "input_tokens": 17,
        "output_tokens": 9,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 17},
    }
    usage = parse_transcription_usage(raw)
    assert usage == TranscriptionUsage(kind="tokens", input_text=0, input_audio=17, output_tokens=9)
    price, key = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-4o-transcribe")
    assert key == "gpt-4o-transcribe"
    # 17 x 6_000_000 + 9 x 10_000_000 = 192_000_000 -> 192 micro-USD
    assert transcription_cost_micro_usd(usage, price) == 192


def test_per_minute_transcription_cost() -> None:
    price, key = DEFAULT_PRICE_TABLE.transcription_price_for("whisper-1")
    assert (key, price.per_minute) == ("whisper-1", 6_000)
    # 2400 ms x 6000 / 60000 = 240 micro-USD
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=2400), price) == 240
    # 1 ms x 17000 / 60000 = 0.283.. -> 0; 2 ms -> 0.566.. -> 1
    whisper_rt, _ = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-realtime-whisper")
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=1), whisper_rt) == 0
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=2), whisper_rt) == 1
    # gpt-live-transcribe, $0.017/min: 2400 ms x 17_000 / 60_000 = 680 micro-USD
    live, key = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-live-transcribe")
    assert (key, live) == ("gpt-live-transcribe", TranscriptionPrice(per_minute=17_000))
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=2400), live) == 680


def test_mismatched_usage_and_price_basis_convert_through_audio_tokens() -> None:
    per_token, _ = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-4o-transcribe")
    # 2401 ms -> 25 audio tokens x 6_000_000 = 150_000_000 -> 150 micro-USD
    duration = TranscriptionUsage(kind="duration", duration_ms=2401)
    assert transcription_cost_micro_usd(duration, per_token) == 150
    per_minute, _ = DEFAULT_PRICE_TABLE.transcription_price_for("whisper-1")
    # 30 audio tokens -> 3000 ms x 6000 / 60000 = 300 micro-USD
    tokens = TranscriptionUsage(kind="tokens", input_audio=30, output_tokens=5)
    assert transcription_cost_micro_usd(tokens, per_minute) == 300


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-mini-transcribe"),
        ("gpt-4o-transcribe-diarize", "gpt-4o-transcribe-diarize"),
        ("gpt-live-transcribe", "gpt-live-transcribe"),
        ("gpt-realtime-whisper", "gpt-realtime-whisper"),
        ("gpt-transcribe-9", CEILING_KEY),
    ],
)
def test_transcription_models_resolve(model: str, key: str) -> None:
    _, resolved = DEFAULT_PRICE_TABLE.transcription_price_for(model)
    assert resolved == key
    assert DEFAULT_PRICE_TABLE.transcription_is_known(model) == (key != CEILING_KEY)


# -- a table's own rules ------------------------------------------------------------------------


def test_a_table_needs_models_and_transcription_prices() -> None:
    with pytest.raises(ValueError, match="models"):
        PriceTable(version="v", models={}, transcription=DEFAULT_PRICE_TABLE.transcription)
    with pytest.raises(ValueError, match="transcription"):
        PriceTable(version="v", models=DEFAULT_PRICE_TABLE.models, transcription={})


def test_a_model_is_priced_on_one_basis_only() -> None:
    with pytest.raises(ValueError, match="'gpt-realtime' is priced twice"):
        replace(DEFAULT_PRICE_TABLE, durations={"gpt-realtime": DurationPrice(1)})


def test_model_versions_name_priced_models_only() -> None:
    with pytest.raises(ValueError, match="model_versions"):
        replace(DEFAULT_PRICE_TABLE, model_versions={"gpt-nothing": "v1"})
    table = replace(DEFAULT_PRICE_TABLE, version="acme-1", model_versions={"gpt-realtime": "2026-12-06"})
    assert (table.version_for("gpt-realtime"), table.version_for("gpt-live-1")) == ("2026-12-06", "acme-1")


def test_unknown_models_is_refuse_or_ceiling() -> None:
    with pytest.raises(ValueError, match="unknown_models"):
        replace(DEFAULT_PRICE_TABLE, unknown_models="cheapest")  # type: ignore[arg-type]


def test_prices_must_be_non_negative_ints() -> None:
    with pytest.raises(ValueError, match="audio_out"):
        replace(GPT_REALTIME, audio_out=-1)
    with pytest.raises(ValueError, match="text_in"):
        replace(GPT_REALTIME, text_in=4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="together"):
        TranscriptionPrice(text_in=1)
    with pytest.raises(ValueError, match="cached_text_in"):
        TokenPrice(text_in=1, cached_text_in=True, text_out=1)


def test_the_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRICE_TABLE.models["free"] = replace(GPT_REALTIME, audio_out=0)  # type: ignore[index]
    with pytest.raises(TypeError):
        DEFAULT_PRICE_TABLE.durations["gpt-live-1"] = DurationPrice(0)  # type: ignore[index]
