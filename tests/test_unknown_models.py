"""An unknown model: refused at session start, or (when the table allows it) priced at the
ceiling and flagged on its rows; never silently priced as another model."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given

from policies.admission import AdmissionSnapshot, Admit, Refuse, decide_admission
from policies.metering import transcription_record, usage_record
from policies.policy import UNRESTRICTED
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import DurationPrice, TokenPrice, TranscriptionPrice
from policies.prices.table import CEILING_KEY
from policies.pricing import cost_micro_usd, duration_cost_micro_usd
from policies.usage import ResponseUsage
from tests.support import doc_prices
from tests.support.doc_prices import WORKED_EXAMPLE_USAGE
from tests.support.price_strategies import milliseconds, usages

# -- model resolution and unknown models --------------------------------------------------------


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
    assert DEFAULT_PRICE_TABLE.is_known(model) and DEFAULT_PRICE_TABLE.admits(model)
    assert DEFAULT_PRICE_TABLE.version_for(resolved) == doc_prices.VERSION


@pytest.mark.parametrize(
    "model", ["gpt-realtime-9", "", "unknown", "gpt-realtime-2025-08", "GPT-REALTIME", "gpt-live-1"]
)
def test_an_unknown_realtime_model_is_refused_at_session_start(model: str) -> None:
    assert not DEFAULT_PRICE_TABLE.is_known(model) and not DEFAULT_PRICE_TABLE.admits(model)
    refused = decide_admission(UNRESTRICTED, model, AdmissionSnapshot(), 0.0, DEFAULT_PRICE_TABLE)
    assert isinstance(refused, Refuse)
    assert (refused.status, refused.code, refused.type, refused.param) == (
        403,
        "model_not_priced",
        "invalid_request_error",
        "model",
    )
    assert f"'{model}'" in refused.message and "VOXGATE_PRICE_FILE" in refused.message


def test_a_table_that_allows_the_ceiling_admits_unknown_models() -> None:
    table = replace(DEFAULT_PRICE_TABLE, unknown_models="ceiling")
    assert table.admits("gpt-realtime-9") and not table.is_known("gpt-realtime-9")
    assert isinstance(decide_admission(UNRESTRICTED, "gpt-realtime-9", AdmissionSnapshot(), 0.0, table), Admit)


def test_an_unknown_model_is_priced_at_the_ceiling_and_its_rows_are_flagged() -> None:
    table = replace(DEFAULT_PRICE_TABLE, unknown_models="ceiling")
    response = {"id": "resp_1", "status": "completed", "usage": WORKED_EXAMPLE_USAGE}
    priced = usage_record(response, session_id="vgs_1", tenant_id="ten_1", model="gpt-realtime-9", prices=table, now=0)
    assert priced is not None
    record, _ = priced
    # Never priced as another model: the ceiling, flagged in the version stamped on the row.
    assert record.model == "gpt-realtime-9" and record.price_version == "2026-12-06+ceiling"
    # The ceiling of every bucket (5.00 / 2.50 / 24.00 text, 40.00 / 80.00 audio, per 1M):
    #   55 x 5_000_000 + 64 x 2_500_000 + 13 x 40_000_000 + 30 x 24_000_000 + 91 x 80_000_000
    #   = 275_000_000 + 160_000_000 + 520_000_000 + 720_000_000 + 7_280_000_000 = 8_955_000_000 -> 8_955
    assert record.cost_micro_usd == 8_955


def test_an_unknown_transcription_model_is_priced_at_the_ceiling_and_flagged() -> None:
    event = {"item_id": "item_1", "usage": {"type": "duration", "seconds": 6}}
    record = transcription_record(
        event, session_id="vgs_1", tenant_id="ten_1", model="gpt-transcribe-9", prices=DEFAULT_PRICE_TABLE, now=0
    )
    assert record is not None and record.price_version == "2026-12-06+ceiling"
    # The highest per-minute rate of the table (gpt-live-1, $0.05/min): 6000 ms x 50_000 / 60_000 = 5_000
    assert record.cost_micro_usd == 5_000
    known = transcription_record(
        event, session_id="vgs_1", tenant_id="ten_1", model="gpt-live-transcribe", prices=DEFAULT_PRICE_TABLE, now=0
    )
    # 6000 ms x 17_000 / 60_000 = 1_700
    assert known is not None and (known.price_version, known.cost_micro_usd) == ("2026-12-06", 1_700)


@given(usages())
def test_an_unknown_model_never_costs_less_than_any_known_one(usage: ResponseUsage) -> None:
    price, _ = DEFAULT_PRICE_TABLE.price_for("gpt-realtime-from-the-future")
    ceiling_cost = cost_micro_usd(usage, price)
    for known in DEFAULT_PRICE_TABLE.models.values():
        assert ceiling_cost >= cost_micro_usd(usage, known)


@given(milliseconds, milliseconds)
def test_an_unknown_live_model_never_costs_less_than_any_known_one(active: int, standby: int) -> None:
    ceiling, key = DEFAULT_PRICE_TABLE.duration_price_for("gpt-live-9")
    assert key == CEILING_KEY
    cost = duration_cost_micro_usd(ceiling, active_ms=active, standby_ms=standby)
    for known in DEFAULT_PRICE_TABLE.durations.values():
        assert cost >= duration_cost_micro_usd(known, active_ms=active, standby_ms=standby)


def test_the_ceilings_of_the_default_table() -> None:
    table = DEFAULT_PRICE_TABLE
    assert (table.ceiling.text_out, table.ceiling.audio_in, table.ceiling.audio_out) == (
        24_000_000,
        40_000_000,
        80_000_000,
    )
    # Without Responses models, the dearest realtime text rates: 5.00 in, 2.50 cached (the preview), 24.00 out.
    assert table.responses_price_for("gpt-5.5") == (TokenPrice(5_000_000, 2_500_000, 24_000_000), CEILING_KEY)
    # Active at gpt-live's 0.05; paused at translation's 0.034 (it has no cheaper standby rate).
    assert table.duration_price_for("gpt-live-9") == (DurationPrice(50_000, 34_000), CEILING_KEY)
    assert table.transcription_price_for("gpt-transcribe") == (
        TranscriptionPrice(text_in=2_500_000, audio_in=6_000_000, text_out=10_000_000, per_minute=50_000),
        CEILING_KEY,
    )


def test_every_unknown_basis_is_stamped_as_the_ceiling() -> None:
    assert DEFAULT_PRICE_TABLE.version_for(CEILING_KEY) == "2026-12-06+ceiling"
    for lookup in ("price_for", "transcription_price_for", "responses_price_for", "duration_price_for"):
        _, key = getattr(DEFAULT_PRICE_TABLE, lookup)("no-such-model")
        assert key == CEILING_KEY, lookup


@pytest.mark.parametrize(
    ("model", "basis", "admitted"),
    [
        ("gpt-live-1", "durations", True),
        ("gpt-live-1", "models", False),
        ("gpt-live-9", "durations", False),
        ("gpt-realtime-translate", "durations", True),
        ("gpt-live-transcribe", "transcription", True),
        ("gpt-4o-transcribe-2025-12-15", "transcription", True),
        ("gpt-transcribe-9", "transcription", False),
        ("gpt-5.5", "responses", False),
    ],
)
def test_admission_asks_the_basis_the_session_is_billed_on(model: str, basis: str, admitted: bool) -> None:
    assert DEFAULT_PRICE_TABLE.admits(model, basis) is admitted  # type: ignore[arg-type]
    assert replace(DEFAULT_PRICE_TABLE, unknown_models="ceiling").admits(model, basis)  # type: ignore[arg-type]
