"""`BudgetWindows.at`: the UTC day and month of an instant, cached per day, right at every edge."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.livestate.keys import WINDOW_MARGIN_S, BudgetWindows

DAY = 86400


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_the_last_second_of_a_month_and_the_first_of_the_next() -> None:
    before = BudgetWindows.at(at("2026-01-31T23:59:59"))
    assert (before.day, before.month) == ("2026-01-31", "2026-01")
    assert before.day_start == 1_769_817_600.0 and before.month_start == 1_767_225_600.0
    assert before.day_ttl == before.month_ttl == 1 + WINDOW_MARGIN_S
    after = BudgetWindows.at(at("2026-02-01T00:00:00"))
    assert (after.day, after.month) == ("2026-02-01", "2026-02")
    assert after.day_start == after.month_start == 1_769_904_000.0
    assert after.day_ttl == DAY + WINDOW_MARGIN_S
    assert after.month_ttl == 28 * DAY + WINDOW_MARGIN_S  # February 2026 has 28 days


def test_the_ttls_count_down_within_one_cached_day() -> None:
    noon = BudgetWindows.at(at("2026-03-15T12:00:00"))
    later = BudgetWindows.at(at("2026-03-15T18:30:00.25"))
    assert noon.day == later.day == "2026-03-15"
    assert noon.day_ttl == 12 * 3600 + WINDOW_MARGIN_S
    assert later.day_ttl == 5 * 3600 + 29 * 60 + 60 + WINDOW_MARGIN_S  # 5 h 29 min 59.75 s, rounded up
    assert noon.month_ttl == (16 * DAY + 12 * 3600) + WINDOW_MARGIN_S  # to 2026-04-01T00:00Z


@pytest.mark.parametrize(
    ("instant", "day", "month", "days_in_month"),
    [
        ("2028-02-29T08:00:00", "2028-02-29", "2028-02", 29),  # a leap day
        ("2026-12-31T23:59:59.5", "2026-12-31", "2026-12", 31),  # the year turns
        ("2027-01-01T00:00:00", "2027-01-01", "2027-01", 31),
    ],
)
def test_leap_days_and_year_ends(instant: str, day: str, month: str, days_in_month: int) -> None:
    w = BudgetWindows.at(at(instant))
    assert (w.day, w.month) == (day, month)
    assert w.month_start == at(f"{month}-01T00:00:00")
    assert (
        w.month_start + days_in_month * DAY - at(instant)
        <= w.month_ttl - WINDOW_MARGIN_S
        < (w.month_start + days_in_month * DAY - at(instant) + 1)
    )


def test_going_back_in_time_gives_the_earlier_day_again() -> None:
    assert BudgetWindows.at(at("2026-05-02T00:00:00")).day == "2026-05-02"
    back = BudgetWindows.at(at("2026-04-30T23:00:00"))
    assert (back.day, back.month, back.day_ttl) == ("2026-04-30", "2026-04", 3600 + WINDOW_MARGIN_S)
