"""Pricing: usage parsing that never raises, exact integer costs, and the price table."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.pricing import (
    CEILING_KEY,
    DEFAULT_PRICE_TABLE,
    ModelPrice,
    PriceTable,
    TranscriptionPrice,
    cost_micro_usd,
    dump_price_table,
    load_price_table,
    transcription_cost_micro_usd,
    usd_to_micro,
)
from policies.usage import (
    ResponseUsage,
    TranscriptionUsage,
    parse_response_usage,
    parse_transcription_usage,
)
from tests.support import doc_prices

# The `response.done` usage from the protocol reference, section 5.
REFERENCE_USAGE: dict[str, Any] = {
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
    micro = sum((Fraction(tokens * rate, 1_000_000) for tokens, rate in pairs), Fraction(0))
    return int(micro + Fraction(1, 2))  # floor(x + 1/2) for x >= 0


# -- strategies ---------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=10**7)
rates = st.integers(min_value=0, max_value=200_000_000)


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


model_prices = st.builds(ModelPrice, *[rates] * 8)

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "input_tokens",
                    "output_tokens",
                    "total_tokens",
                    "input_token_details",
                    "output_token_details",
                    "text_tokens",
                    "audio_tokens",
                    "image_tokens",
                    "cached_tokens",
                    "cached_tokens_details",
                    "type",
                    "seconds",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


# -- the default table is the documented one ----------------------------------------------------


def test_the_default_table_is_the_one_docs_pricing_md_publishes() -> None:
    # tests/support/doc_prices.py is docs/pricing.md's table typed in by hand, not read from the code.
    assert DEFAULT_PRICE_TABLE.version == doc_prices.VERSION
    assert sorted(DEFAULT_PRICE_TABLE.models) == sorted(doc_prices.MODELS)
    for model, rates in doc_prices.MODELS.items():
        price = DEFAULT_PRICE_TABLE.models[model]
        assert tuple(getattr(price, name) for name in doc_prices.RATE_NAMES) == rates, model
    assert sorted(DEFAULT_PRICE_TABLE.transcription) == sorted(doc_prices.TRANSCRIPTION)
    for model, (text_in, audio_in, text_out, per_minute) in doc_prices.TRANSCRIPTION.items():
        assert DEFAULT_PRICE_TABLE.transcription[model] == TranscriptionPrice(text_in, audio_in, text_out, per_minute)


def test_the_independent_formula_agrees_on_the_worked_example() -> None:
    # The e2e tests price what the emulator reports with doc_prices.doc_cost; it must give the
    # docs' worked example (6_966, by hand in the test below) for the reference usage.
    assert doc_prices.doc_cost(REFERENCE_USAGE) == 6966
    # gpt-realtime-mini: 55 x 600_000 + 64 x 60_000 + 13 x 10_000_000 + 30 x 2_400_000 + 91 x 20_000_000
    #                    = 2_058_840_000 -> 2_059
    assert doc_prices.doc_cost(REFERENCE_USAGE, "gpt-realtime-mini") == 2059
    mini = DEFAULT_PRICE_TABLE.models["gpt-realtime-mini"]
    assert cost_micro_usd(parse_response_usage(REFERENCE_USAGE), mini) == 2059


# -- response usage parsing ---------------------------------------------------------------------


def test_reference_usage_parses_to_its_buckets() -> None:
    usage = parse_response_usage(REFERENCE_USAGE)
    assert usage == ResponseUsage(
        input_tokens=132,
        output_tokens=121,
        total_tokens=253,
        input_text=119,
        input_audio=13,
        input_image=0,
        cached_text=64,
        cached_audio=0,
        cached_image=0,
        output_text=30,
        output_audio=91,
    )
    assert (usage.uncached_text, usage.uncached_audio, usage.uncached_image) == (55, 13, 0)


def test_reference_usage_costs_what_the_hand_computation_says() -> None:
    # gpt-realtime, micro-USD per 1M tokens:
    #   uncached text   55 x  4_000_000 =   220_000_000
    #   cached text     64 x    400_000 =    25_600_000
    #   uncached audio  13 x 32_000_000 =   416_000_000
    #   output text     30 x 16_000_000 =   480_000_000
    #   output audio    91 x 64_000_000 = 5_824_000_000
    #   sum                             = 6_965_600_000  -> / 1M = 6965.6 -> 6966 micro-USD
    assert cost_micro_usd(parse_response_usage(REFERENCE_USAGE), GPT_REALTIME) == 6966


def test_beta_usage_without_image_fields_parses() -> None:
    raw = json.loads(json.dumps(REFERENCE_USAGE))
    del raw["input_token_details"]["image_tokens"]
    del raw["input_token_details"]["cached_tokens_details"]["image_tokens"]
    assert parse_response_usage(raw) == parse_response_usage(REFERENCE_USAGE)


@pytest.mark.parametrize("garbage", [None, 42, "usage", [], {}, {"input_tokens": None}, {"input_tokens": True}])
def test_unusable_usage_reads_as_zero(garbage: object) -> None:
    usage = parse_response_usage(garbage)
    assert usage == ResponseUsage()
    assert cost_micro_usd(usage, GPT_REALTIME) == 0


def test_wrong_typed_and_negative_counts_read_as_zero() -> None:
    usage = parse_response_usage(
        {
            "input_tokens": -5,
            "output_tokens": 3.0,
            "input_token_details": {"text_tokens": "10", "audio_tokens": -1, "image_tokens": False},
            "output_token_details": {"text_tokens": None, "audio_tokens": 7},
        }
    )
    assert usage == ResponseUsage(output_audio=7)


def test_input_without_breakdown_is_priced_as_audio() -> None:
    usage = parse_response_usage({"input_tokens": 100, "output_tokens": 0})
    assert (usage.input_text, usage.input_audio, usage.input_image) == (0, 100, 0)


def test_output_without_breakdown_is_priced_as_audio() -> None:
    usage = parse_response_usage({"output_tokens": 40})
    assert (usage.output_text, usage.output_audio) == (0, 40)


def test_tokens_the_breakdown_leaves_unexplained_are_priced_as_audio() -> None:
    usage = parse_response_usage(
        {
            "input_tokens": 50,
            "input_token_details": {"text_tokens": 20},
            "output_tokens": 30,
            "output_token_details": {"text_tokens": 10},
        }
    )
    assert (usage.input_text, usage.input_audio) == (20, 30)
    assert (usage.output_text, usage.output_audio) == (10, 20)


def test_cached_counts_are_clamped_to_their_modality() -> None:
    usage = parse_response_usage(
        {
            "input_tokens": 15,
            "input_token_details": {
                "text_tokens": 10,
                "audio_tokens": 5,
                "cached_tokens": 999,
                "cached_tokens_details": {"text_tokens": 50, "audio_tokens": 2, "image_tokens": 9},
            },
        }
    )
    assert (usage.cached_text, usage.cached_audio, usage.cached_image) == (10, 2, 0)


def test_cached_total_without_details_goes_to_text_then_image_then_audio() -> None:
    usage = parse_response_usage(
        {
            "input_tokens": 60,
            "input_token_details": {
                "text_tokens": 10,
                "audio_tokens": 30,
                "image_tokens": 20,
                "cached_tokens": 35,
            },
        }
    )
    assert (usage.cached_text, usage.cached_image, usage.cached_audio) == (10, 20, 5)


@given(json_like)
def test_parsing_arbitrary_json_never_raises_and_yields_valid_usage(raw: object) -> None:
    usage = parse_response_usage(raw)
    for f in fields(usage):
        assert getattr(usage, f.name) >= 0
    assert cost_micro_usd(usage, DEFAULT_PRICE_TABLE.ceiling) >= 0
    parse_transcription_usage(raw)


@given(json_like)
def test_parsing_arbitrary_json_inside_the_expected_shape_never_raises(inner: object) -> None:
    for raw in (
        {"input_tokens": 5, "input_token_details": inner, "output_token_details": inner},
        {"input_token_details": {"text_tokens": 3, "cached_tokens": inner, "cached_tokens_details": inner}},
        {"type": "duration", "seconds": inner},
        {"type": "tokens", "input_tokens": inner, "input_token_details": inner},
    ):
        parse_response_usage(raw)
        parse_transcription_usage(raw)


def test_usage_rejects_direct_construction_that_breaks_its_invariants() -> None:
    with pytest.raises(ValueError, match="input_text"):
        ResponseUsage(input_text=-1)
    with pytest.raises(ValueError, match="cached_audio exceeds input_audio"):
        ResponseUsage(input_audio=1, cached_audio=2)


# -- response cost properties -------------------------------------------------------------------


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


# -- model resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-realtime", "gpt-realtime"),
        ("gpt-realtime-2025-08-28", "gpt-realtime"),
        ("gpt-realtime-mini-2025-12-15", "gpt-realtime-mini"),
        ("gpt-realtime-mini-2025-10-06", "gpt-realtime-mini"),
        ("gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview"),
        ("gpt-4o-mini-realtime-preview-2024-12-17", "gpt-4o-mini-realtime-preview"),
        ("gpt-realtime-2.1", "gpt-realtime-2.1"),
        ("gpt-realtime-2.1-mini", "gpt-realtime-2.1-mini"),
    ],
)
def test_snapshot_names_resolve_to_their_model(model: str, key: str) -> None:
    price, resolved = DEFAULT_PRICE_TABLE.price_for(model)
    assert resolved == key
    assert price == DEFAULT_PRICE_TABLE.models[key]
    assert DEFAULT_PRICE_TABLE.is_known(model)


@pytest.mark.parametrize("model", ["gpt-realtime-9", "", "unknown", "gpt-realtime-2025-08", "GPT-REALTIME"])
def test_unknown_models_are_priced_at_the_ceiling(model: str) -> None:
    price, resolved = DEFAULT_PRICE_TABLE.price_for(model)
    assert resolved == CEILING_KEY
    assert not DEFAULT_PRICE_TABLE.is_known(model)
    for key, known in DEFAULT_PRICE_TABLE.models.items():
        for f in fields(ModelPrice):
            assert getattr(price, f.name) >= getattr(known, f.name), (key, f.name)


@given(usages())
def test_an_unknown_model_never_costs_less_than_any_known_one(usage: ResponseUsage) -> None:
    price, _ = DEFAULT_PRICE_TABLE.price_for("gpt-realtime-from-the-future")
    ceiling_cost = cost_micro_usd(usage, price)
    for known in DEFAULT_PRICE_TABLE.models.values():
        assert ceiling_cost >= cost_micro_usd(usage, known)


def test_ceiling_of_the_default_table() -> None:
    ceiling = DEFAULT_PRICE_TABLE.ceiling
    assert (ceiling.text_out, ceiling.audio_in, ceiling.audio_out) == (24_000_000, 40_000_000, 80_000_000)


def test_an_explicit_fallback_model_replaces_the_ceiling() -> None:
    table = replace(DEFAULT_PRICE_TABLE, fallback_model="gpt-realtime-2")
    assert table.price_for("gpt-realtime-9") == (table.models["gpt-realtime-2"], "gpt-realtime-2")
    assert not table.is_known("gpt-realtime-9")


def test_fallback_model_must_be_in_the_table() -> None:
    with pytest.raises(ValueError, match="fallback_model"):
        replace(DEFAULT_PRICE_TABLE, fallback_model="nope")


def test_a_table_needs_models_and_transcription_prices() -> None:
    with pytest.raises(ValueError, match="models"):
        PriceTable(version="v", models={}, transcription=DEFAULT_PRICE_TABLE.transcription)
    with pytest.raises(ValueError, match="transcription"):
        PriceTable(version="v", models=DEFAULT_PRICE_TABLE.models, transcription={})


def test_prices_must_be_non_negative_ints() -> None:
    with pytest.raises(ValueError, match="audio_out"):
        replace(GPT_REALTIME, audio_out=-1)
    with pytest.raises(ValueError, match="text_in"):
        replace(GPT_REALTIME, text_in=4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="together"):
        TranscriptionPrice(text_in=1)


def test_the_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRICE_TABLE.models["free"] = replace(GPT_REALTIME, audio_out=0)  # type: ignore[index]


def test_gpt_realtime_2_and_2_1_cost_more_for_text_output() -> None:
    models = DEFAULT_PRICE_TABLE.models
    assert models["gpt-realtime-2"] == models["gpt-realtime-2.1"]
    assert models["gpt-realtime-2"].text_out == 24_000_000
    assert models["gpt-realtime"].text_out == 16_000_000


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


def test_duration_transcription_usage_rounds_up_to_the_millisecond() -> None:
    assert parse_transcription_usage({"type": "duration", "seconds": 2.4}) == TranscriptionUsage(
        kind="duration", duration_ms=2400
    )
    assert parse_transcription_usage({"type": "duration", "seconds": 0.0001}).duration_ms == 1  # type: ignore[union-attr]
    assert parse_transcription_usage({"type": "duration", "seconds": 3}).duration_ms == 3000  # type: ignore[union-attr]


def test_per_minute_transcription_cost() -> None:
    price, key = DEFAULT_PRICE_TABLE.transcription_price_for("whisper-1")
    assert (key, price.per_minute) == ("whisper-1", 6_000)
    # 2400 ms x 6000 / 60000 = 240 micro-USD
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=2400), price) == 240
    # 1 ms x 17000 / 60000 = 0.283.. -> 0; 2 ms -> 0.566.. -> 1
    whisper_rt, _ = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-realtime-whisper")
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=1), whisper_rt) == 0
    assert transcription_cost_micro_usd(TranscriptionUsage(kind="duration", duration_ms=2), whisper_rt) == 1


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
        ("gpt-live-transcribe", CEILING_KEY),
    ],
)
def test_transcription_models_resolve(model: str, key: str) -> None:
    _, resolved = DEFAULT_PRICE_TABLE.transcription_price_for(model)
    assert resolved == key
    assert DEFAULT_PRICE_TABLE.transcription_is_known(model) == (key != CEILING_KEY)


def test_unknown_transcription_model_gets_every_basis_at_its_highest_rate() -> None:
    price, _ = DEFAULT_PRICE_TABLE.transcription_price_for("gpt-transcribe")
    assert price == TranscriptionPrice(text_in=2_500_000, audio_in=6_000_000, text_out=10_000_000, per_minute=17_000)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "x",
        {},
        {"type": "words"},
        {"type": "duration"},
        {"type": "duration", "seconds": -1},
        {"type": "duration", "seconds": float("nan")},
        {"type": "duration", "seconds": float("inf")},
        {"type": "duration", "seconds": True},
        {"type": "tokens", "input_tokens": "5"},
    ],
)
def test_unusable_transcription_usage_is_none(raw: object) -> None:
    assert parse_transcription_usage(raw) is None


def test_transcription_usage_without_a_type_is_inferred() -> None:
    assert parse_transcription_usage({"seconds": 1.5}) == TranscriptionUsage(kind="duration", duration_ms=1500)
    assert parse_transcription_usage({"input_tokens": 4}) == TranscriptionUsage(kind="tokens", input_audio=4)


# -- loading a table ----------------------------------------------------------------------------


def test_the_default_table_round_trips_through_plain_data() -> None:
    data = dump_price_table(DEFAULT_PRICE_TABLE)
    assert json.loads(json.dumps(data)) == data
    assert load_price_table(data) == DEFAULT_PRICE_TABLE
    assert data["models"]["gpt-realtime"]["audio_out"] == "64.00"  # type: ignore[index]
    assert data["transcription"]["whisper-1"] == {"per_minute": "0.006"}  # type: ignore[index]


def test_a_loaded_table_can_name_its_fallback_model() -> None:
    data = dump_price_table(DEFAULT_PRICE_TABLE) | {
        "fallback_model": "gpt-realtime-2",
        "version": "2027-01-01",
    }
    table = load_price_table(data)
    assert table.version == "2027-01-01"
    assert table.price_for("gpt-realtime-3")[1] == "gpt-realtime-2"


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("4.00", 4_000_000),
        ("0.006", 6_000),
        ("0.000001", 1),
        ("1.0000000", 1_000_000),
        (" 2.5 ", 2_500_000),
        (3, 3_000_000),
    ],
)
def test_usd_amounts_convert_exactly(text: object, micro: int) -> None:
    assert usd_to_micro(text, "x") == micro


def _table_with(path: tuple[str, ...], value: object) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dump_price_table(DEFAULT_PRICE_TABLE)))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("models", "gpt-realtime", "text_in"), "0.0000001", "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), "-1.00", "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), -1, "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), 4.0, "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), "1e3", "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), True, "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "text_in"), _DELETE, "models.gpt-realtime.text_in"),
        (("models", "gpt-realtime", "reasoning_out"), "1.00", "models.gpt-realtime.reasoning_out"),
        (("transcription", "whisper-1", "per_second"), "1.00", "transcription.whisper-1.per_second"),
        (("transcription", "whisper-1", "text_in"), "1.00", "transcription.whisper-1"),
        (("transcription", "whisper-1", "per_minute"), _DELETE, "transcription.whisper-1"),
        (("models", "gpt-realtime"), "4.00", "models.gpt-realtime"),
        (("models",), {}, "models"),
        (("models",), [], "models"),
        (("transcription",), _DELETE, "transcription"),
        (("version",), "", "version"),
        (("version",), 20261124, "version"),
        (("currency",), "EUR", "currency"),
        (("fallback_model",), "gpt-realtime-9", "fallback_model"),
    ],
)
def test_bad_tables_are_rejected_naming_the_key(path: tuple[str, ...], value: object, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_price_table(_table_with(path, value))
