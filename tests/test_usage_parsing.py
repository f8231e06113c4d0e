"""Reading upstream usage: it never raises, and every misreading errs toward billing more."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.pricing import cost_micro_usd
from policies.usage import ResponseUsage, TranscriptionUsage, parse_response_usage, parse_transcription_usage
from tests.support.doc_prices import WORKED_EXAMPLE_USAGE

USAGE_KEYS = [
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
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(USAGE_KEYS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=30,
)


# -- response usage -----------------------------------------------------------------------------


def test_reference_usage_parses_to_its_buckets() -> None:
    usage = parse_response_usage(WORKED_EXAMPLE_USAGE)
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


def test_beta_usage_without_image_fields_parses() -> None:
    raw = json.loads(json.dumps(WORKED_EXAMPLE_USAGE))
    del raw["input_token_details"]["image_tokens"]
    del raw["input_token_details"]["cached_tokens_details"]["image_tokens"]
    assert parse_response_usage(raw) == parse_response_usage(WORKED_EXAMPLE_USAGE)


@pytest.mark.parametrize("garbage", [None, 42, "usage", [], {}, {"input_tokens": None}, {"input_tokens": True}])
def test_unusable_usage_reads_as_zero(garbage: object) -> None:
    usage = parse_response_usage(garbage)
    assert usage == ResponseUsage()
    assert cost_micro_usd(usage, DEFAULT_PRICE_TABLE.models["gpt-realtime"]) == 0


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


# -- transcription usage ------------------------------------------------------------------------


def test_duration_transcription_usage_rounds_up_to_the_millisecond() -> None:
    assert parse_transcription_usage({"type": "duration", "seconds": 2.4}) == TranscriptionUsage(
        kind="duration", duration_ms=2400
    )
    assert parse_transcription_usage({"type": "duration", "seconds": 0.0001}).duration_ms == 1  # type: ignore[union-attr]
    assert parse_transcription_usage({"type": "duration", "seconds": 3}).duration_ms == 3000  # type: ignore[union-attr]


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
