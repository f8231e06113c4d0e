"""Exact decimal text of FOCUS quantities (policies/finance.py), negatives included."""

from __future__ import annotations

import pytest

from policies.finance import FocusCharge, focus_row, seconds_of_ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0.000"), (1, "0.001"), (1500, "1.500"), (-1, "-0.001"), (-1500, "-1.500"), (-2000, "-2.000")],
)
def test_milliseconds_are_written_as_exact_seconds_with_the_sign_first(ms: int, text: str) -> None:
    assert seconds_of_ms(ms) == text


def test_a_negative_duration_quantity_in_a_focus_row_keeps_its_magnitude() -> None:
    charge = FocusCharge(
        period_start=0,
        period_end=3600,
        billing_period_start=0,
        billing_period_end=86400,
        tenant_id="t1",
        tenant_name="T1",
        line_item="translation",
        quantity=-1500,
        unit="milliseconds",
        amount_micro_usd=-850,
        tags={},
        billing_account="acct",
    )
    row = focus_row(charge)
    assert row["ConsumedQuantity"] == "-1.500"
    assert row["PricingQuantity"] == "-1.500"
    assert row["BilledCost"] == "-0.000850"
