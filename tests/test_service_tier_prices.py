"""Service tiers of a Live session's delegated Responses calls are priced by the versioned price table.

The built-in table prices tiers as multiples of a model's standard rates; a price file
(`VOXGATE_PRICE_FILE`) can replace those multiples table-wide, or give a model its own tier
prices (explicit rates or a multiple). A tier the table does not price is billed at its
dearest and the row flagged, never priced as the default tier. Expected costs are worked out
here by hand or with `Fraction`, never with voxgate's pricing code.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.price_file import PriceFileError, load_prices, read_price_sheet
from policies.live.config import LiveRefusal, LiveRules, police_start
from policies.live.meter import LiveIdentity, LiveMeter
from policies.policy import UNRESTRICTED
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import TierMultiplier, TokenPrice
from policies.prices.sheet import dump_price_sheet
from policies.prices.table import PriceTable
from policies.pricing import token_cost_micro_usd
from tests.support.price_strategies import counts, half_up, token_prices

# gpt-5.5 at $1.25 / $0.125 / $10.00 per 1M input / cached input / output tokens.
GPT_55 = (
    'version: "{version}"\nmodels:\n  gpt-5.5:\n    input: "1.25"\n    cached_input: "0.125"\n    output: "10.00"\n'
)
USAGE = {"input_tokens": 1840, "input_tokens_details": {"cached_tokens": 1536}, "output_tokens": 212}
# 304 uncached x 1.25 + 1536 cached x 0.125 + 212 x 10.00 = 380 + 192 + 2,120 = 2,692 micro-USD.
STANDARD_COST = 2_692


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def book(table: PriceTable, tier: str | None, response_id: str = "resp_1") -> tuple[int, str]:
    """What a Live meter over `table` books for `USAGE` on gpt-5.5 at `tier`: (cost, price version)."""
    meter = LiveMeter(LiveIdentity("vgs_1", "ten_1", "gpt-live-1"), table)
    response: dict[str, Any] = {"id": response_id, "model": "gpt-5.5", "status": "completed", "usage": USAGE}
    if tier is not None:
        response["service_tier"] = tier
    record = meter.on_response_event({"event": {"type": "response.completed", "response": response}}, 1.0)
    assert record is not None and record.service_tier == tier
    return record.cost_micro_usd, record.price_version


def test_the_built_in_multiples_price_flex_at_half_and_priority_at_double(tmp_path: Path) -> None:
    table = load_prices(write(tmp_path, GPT_55.format(version="acme-1")))
    assert book(table, None) == (STANDARD_COST, "acme-1")
    assert book(table, "default") == (STANDARD_COST, "acme-1")
    assert book(table, "auto") == (STANDARD_COST, "acme-1")
    assert book(table, "flex") == (1_346, "acme-1")  # 2,692 / 2
    assert book(table, "priority") == (5_384, "acme-1")  # 2,692 x 2
    # The built-in multiples are data in the versioned table, not constants of the meter.
    assert DEFAULT_PRICE_TABLE.service_tiers["flex"] == TierMultiplier(1, 2)


def test_an_unknown_tier_is_billed_at_the_dearest_multiple_and_flagged(tmp_path: Path) -> None:
    table = load_prices(write(tmp_path, GPT_55.format(version="acme-1")))
    cost, version = book(table, "hyperspeed")
    assert cost == 5_384 != STANDARD_COST  # x2, the dearest multiple of the table
    assert version == "acme-1+ceiling"  # flagged
    narrow = PriceTable(
        version="t",
        models=DEFAULT_PRICE_TABLE.models,
        transcription=DEFAULT_PRICE_TABLE.transcription,
        responses={"gpt-5.5": TokenPrice(1_250_000, 125_000, 10_000_000)},
    )
    assert book(narrow, "flex") == (STANDARD_COST, "t+ceiling")  # a table without tiers flags even flex


def test_a_price_file_overrides_the_multiples_table_wide_and_stamps_its_version(tmp_path: Path) -> None:
    text = GPT_55.format(version="acme-2") + 'service_tiers:\n  flex: "0.4"\n  scale: "1.5"\n'
    table = load_prices(write(tmp_path, text))
    assert book(table, "flex") == (1_077, "acme-2")  # 2,692 x 0.4 = 1,076.8 -> 1,077
    assert book(table, "scale") == (4_038, "acme-2")  # a tier the file adds: 2,692 x 1.5
    assert book(table, "priority") == (5_384, "acme-2")  # the built-in multiple, kept
    built_in = {"auto", "priority", "fast_tier_temp_pilot", "ultrafast"}  # the multiples the file left alone
    assert table.tier_versions == dict.fromkeys(built_in, "2026-12-06")


def test_a_multiple_from_one_table_over_rates_from_another_is_stamped_with_the_combining_version(
    tmp_path: Path,
) -> None:
    base = PriceTable(
        version="base-1",
        models=DEFAULT_PRICE_TABLE.models,
        transcription=DEFAULT_PRICE_TABLE.transcription,
        responses={"gpt-5.5": TokenPrice(1_250_000, 125_000, 10_000_000)},
        service_tiers={"flex": TierMultiplier(1, 2)},
    )
    table = load_prices(write(tmp_path, 'version: "ops-3"\nservice_tiers: {flex: "0.25"}\nmodels: {}\n'), base)
    assert book(table, None) == (STANDARD_COST, "base-1")  # the model's own rates and version
    assert book(table, "flex") == (673, "ops-3")  # 2,692 / 4; the file's multiple over base-1's rates


def test_a_model_can_have_its_own_tier_prices_explicit_or_a_multiple(tmp_path: Path) -> None:
    text = GPT_55.format(version="acme-4") + (
        '    service_tiers:\n      flex: {input: "0.50", cached_input: "0.05", output: "4.00"}\n      priority: "2.5"\n'
    )
    table = load_prices(write(tmp_path, text))
    # Explicit flex rates: 304 x 0.50 + 1536 x 0.05 + 212 x 4.00 = 152 + 76.8 + 848 = 1,076.8 -> 1,077.
    assert book(table, "flex") == (1_077, "acme-4")
    assert book(table, "priority") == (6_730, "acme-4")  # 2,692 x 2.5
    assert book(table, "ultrafast") == (5_384, "acme-4")  # the table-wide multiple
    # The file form round-trips with the model's tiers.
    sheet = read_price_sheet(write(tmp_path, yaml.safe_dump(dump_price_sheet(table), sort_keys=False)))
    assert sheet.tier_prices == table.tier_prices
    assert {"default": TierMultiplier(1, 1), **sheet.service_tiers} == table.service_tiers


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('service_tiers: {default: "2"}\n', "service_tiers.default: the default tier is the model's own rates"),
        ("service_tiers: {flex: 0.5}\n", "service_tiers.flex: 0.5 is a float"),
        ('service_tiers: {flex: "-1"}\n', "service_tiers.flex"),
        ('service_tiers: ["flex"]\n', "service_tiers: expected a mapping"),
        ('service_tiers: {flex: {input: "1", cached_input: "1", output: "1"}}\n', "service_tiers.flex"),
    ],
)
def test_bad_table_wide_tiers_are_refused_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(PriceFileError) as refused:
        load_prices(write(tmp_path, GPT_55.format(version="v") + text))
    assert fragment in str(refused.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('  gpt-live-1:\n    per_minute: "0.05"\n    service_tiers: {flex: "0.5"}\n', "only a Responses model"),
        ('    service_tiers: {flex: {input: "1", output: "1"}}\n', "models.gpt-5.5.service_tiers.flex"),
        ('    service_tiers: {flex: {input: "1", cached_input: "1", output: "1", x: "1"}}\n', "x: unknown key"),
    ],
)
def test_bad_model_tiers_are_refused_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(PriceFileError) as refused:
        load_prices(write(tmp_path, GPT_55.format(version="v") + text))
    assert fragment in str(refused.value)


@given(token_prices, counts, counts, counts, st.integers(0, 10_000), st.integers(1, 10_000))
def test_a_tiered_cost_is_exact_and_rounded_once(
    price: TokenPrice, inputs: int, cached: int, outputs: int, numerator: int, denominator: int
) -> None:
    cached_in = min(cached, inputs)
    exact = Fraction(
        ((inputs - cached_in) * price.text_in + cached_in * price.cached_text_in + outputs * price.text_out)
        * numerator,
        1_000_000 * denominator,
    )
    cost = token_cost_micro_usd(
        price,
        input_tokens=inputs,
        cached_input_tokens=cached,
        output_tokens=outputs,
        multiplier=TierMultiplier(numerator, denominator),
    )
    assert cost == half_up(exact)


def test_the_policy_passes_only_the_tiers_the_table_bills_at_most_at_the_standard_rates(tmp_path: Path) -> None:
    def tier_forwarded(table: PriceTable, tier: str) -> str:
        session = {
            "model": "gpt-live-1",
            "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "service_tier": tier}},
        }
        policed = police_start(session, LiveRules.from_policy(UNRESTRICTED, table), table)
        assert not isinstance(policed, LiveRefusal)
        return str(policed.session["delegation"]["responses"]["service_tier"])

    built_in = load_prices(write(tmp_path, GPT_55.format(version="v1")))
    assert [tier_forwarded(built_in, t) for t in ("flex", "auto", "priority", "ultrafast", "warp")] == [
        "flex",
        "auto",
        "default",
        "default",
        "default",  # a tier the table does not price never reaches upstream
    ]
    dearer_flex = load_prices(write(tmp_path, GPT_55.format(version="v2") + 'service_tiers: {flex: "1.5"}\n'))
    assert tier_forwarded(dearer_flex, "flex") == "default"


def test_a_tier_any_responses_model_prices_above_standard_is_clamped(tmp_path: Path) -> None:
    """Per-model tier prices count: flex dearer for one model is not "at most the standard rate"."""
    session = {
        "model": "gpt-live-1",
        "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "service_tier": "flex"}},
    }
    dear_multiple = load_prices(write(tmp_path, GPT_55.format(version="m1") + '    service_tiers: {flex: "3"}\n'))
    assert book(dear_multiple, "flex") == (8_076, "m1")  # 2,692 x 3: the model's own multiple wins
    rules = LiveRules.from_policy(UNRESTRICTED, dear_multiple)
    assert "flex" not in rules.service_tiers
    policed = police_start(session, rules, dear_multiple)
    assert not isinstance(policed, LiveRefusal)
    assert policed.session["delegation"]["responses"]["service_tier"] == "default"
    # Explicit rates: one rate above the model's standard one (output 10.50 > 10.00) is dearer.
    dear_output = GPT_55.format(version="m2") + (
        '    service_tiers:\n      flex: {input: "0.50", cached_input: "0.05", output: "10.50"}\n'
    )
    assert "flex" not in LiveRules.from_policy(UNRESTRICTED, load_prices(write(tmp_path, dear_output))).service_tiers
    cheap = (
        GPT_55.format(version="m3")
        + '    service_tiers:\n      flex: {input: "0.50", cached_input: "0.05", output: "4.00"}\n'
    )
    assert "flex" in LiveRules.from_policy(UNRESTRICTED, load_prices(write(tmp_path, cheap))).service_tiers
    # A second model that prices flex above standard clamps it for every model.
    two = cheap + '  gpt-5.5-mini:\n    input: "0.25"\n    cached_input: "0.025"\n    output: "2.00"\n'
    two += '    service_tiers: {flex: "1.25"}\n'
    assert "flex" not in LiveRules.from_policy(UNRESTRICTED, load_prices(write(tmp_path, two))).service_tiers


def test_a_table_without_tiers_passes_auto_as_standard_but_not_an_unpriced_flex() -> None:
    from policies.prices.builtin import TABLE_2026_11_24

    assert not TABLE_2026_11_24.prices_tier("auto") and not TABLE_2026_11_24.prices_tier("flex")
    tiers = LiveRules.from_policy(UNRESTRICTED, TABLE_2026_11_24).service_tiers
    # auto: upstream serves the project's default tier; flex unpriced would be billed at the ceiling.
    assert tiers == frozenset({"auto", "default"})


def test_a_table_wide_tier_above_standard_is_clamped_even_without_responses_models(tmp_path: Path) -> None:
    table = load_prices(write(tmp_path, 'version: "w1"\nservice_tiers: {flex: "0.5", priority: "2"}\nmodels: {}\n'))
    tiers = LiveRules.from_policy(UNRESTRICTED, table).service_tiers
    assert "priority" not in tiers and {"auto", "default"} <= tiers
