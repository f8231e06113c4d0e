"""Budgets with reservation: worst-case costs, the shared-state math, and the proven bound."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.budget import (
    BudgetLimits,
    BudgetState,
    crossed_alerts,
    effective_output_ceiling,
    exhausted_windows,
    force_reserve,
    is_exhausted,
    item_token_estimate,
    model_max_output_tokens,
    remaining_micro_usd,
    seconds_until_reset,
    settle,
    try_reserve,
    worst_case_cost_micro_usd,
)
from policies.policy import BudgetPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("gpt-realtime", 4096),
        ("gpt-realtime-2025-08-28", 4096),
        ("gpt-realtime-2", 32768),
        ("gpt-realtime-2.1-mini", 32768),
        ("gpt-realtime-2.7-preview", 32768),
        ("someone-elses-model", 32768),
    ],
)
def test_model_output_ceilings(model: str, tokens: int) -> None:
    assert model_max_output_tokens(model) == tokens


def test_effective_ceiling_is_response_then_session_capped_by_policy_and_model() -> None:
    assert effective_output_ceiling(None, None, None, "gpt-realtime") == 4096
    assert effective_output_ceiling(None, None, 1024, "gpt-realtime-2") == 1024
    assert effective_output_ceiling(None, 300, 1024, "gpt-realtime-2") == 300
    assert effective_output_ceiling(800, 300, 1024, "gpt-realtime-2") == 800  # a response overrides the session
    assert effective_output_ceiling(9000, None, None, "gpt-realtime") == 4096


def test_worst_case_is_output_at_the_audio_rate_plus_input_at_the_dearest_rate() -> None:
    price, _ = DEFAULT_PRICE_TABLE.price_for("gpt-realtime")
    # 1000 output tokens at $64/1M + 500 input at $32/1M = 0.064 + 0.016 USD.
    assert worst_case_cost_micro_usd(1000, 500, price) == 80_000
    assert worst_case_cost_micro_usd(1, 0, price) == 64  # rounded up, never down


def test_item_estimates_over_count_text_audio_and_images() -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "x" * 300},
            {"type": "input_audio", "audio": "A" * 10660},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        ],
    }
    assert item_token_estimate(item) == 8 + 100 + 10 + 1536
    assert item_token_estimate("junk") == 0


LIMITS = BudgetLimits(daily_micro_usd=1000, monthly_micro_usd=5000, alert_at=(0.5, 0.8, 1.0))


def test_reserve_only_when_it_fits_and_settle_replaces_the_reservation() -> None:
    ok, state = try_reserve(BudgetState(), 600, LIMITS)
    assert ok and state == BudgetState(0, 0, 600, 600)
    refused, same = try_reserve(state, 401, LIMITS)
    assert not refused and same is state
    state = settle(state, 600, 250)
    assert state == BudgetState(250, 250, 0, 0)
    assert remaining_micro_usd(state, LIMITS) == 750
    assert settle(state, 0, 0) == state  # a release of nothing


def test_force_reserve_always_records_and_says_whether_it_fitted() -> None:
    fitted, state = force_reserve(BudgetState(900, 900, 0, 0), 200, LIMITS)
    assert not fitted and state.reserved_day == 200
    assert is_exhausted(state, LIMITS)
    assert exhausted_windows(state, LIMITS) == ("day",)


def test_alerts_fire_once_per_threshold_crossed() -> None:
    limits = BudgetLimits.from_policy(BudgetPolicy(daily_micro_usd=1000, monthly_micro_usd=None))
    alerts = crossed_alerts(BudgetState(400, 400), BudgetState(850, 850), limits)
    assert [(a.window, a.threshold) for a in alerts] == [("day", 0.5), ("day", 0.8)]
    assert crossed_alerts(BudgetState(850, 850), BudgetState(900, 900), limits) == ()
    assert [a.threshold for a in crossed_alerts(BudgetState(900, 900), BudgetState(1000, 1000), limits)] == [1.0]


def test_windows_reset_at_utc_midnight_and_month_start() -> None:
    now = 1_798_761_600.0 - 10  # 2026-12-31T23:59:50Z
    assert seconds_until_reset(now, "day") == pytest.approx(10)
    assert seconds_until_reset(now, "month") == pytest.approx(10)
    assert seconds_until_reset(now + 20, "day") == pytest.approx(86_390)


# -- the bound -----------------------------------------------------------------------------


@dataclass
class Reservation:
    session: int
    reserved: int
    forced: bool
    opened: int  # index of the step that opened it
    actual: int | None = None
    settled: int = 0  # index of the step that settled it


op = st.tuples(st.sampled_from(["reserve", "vad", "settle"]), st.integers(0, 5), st.integers(0, 400), st.integers(0, 3))


@settings(max_examples=400, deadline=None)
@given(limit=st.integers(0, 3000), ops=st.lists(op, max_size=80), window=st.sampled_from(["day", "month"]))
def test_spend_never_exceeds_the_budget_by_more_than_the_documented_bound(
    limit: int, ops: list[tuple[str, int, int, int]], window: str
) -> None:
    """Random interleavings of six sessions sharing one budget, under the governor's rules:
    one response per session at a time; a client response starts only if `try_reserve`
    grants it; a server-started (VAD) one is `force_reserve`d after the fact, and a
    session whose forced reservation did not fit starts nothing more. Actual costs are
    sometimes far above the reservation (a wrong estimate)."""
    limits = BudgetLimits(daily_micro_usd=limit) if window == "day" else BudgetLimits(monthly_micro_usd=limit)
    state = BudgetState()
    open_by_session: dict[int, Reservation] = {}
    stopped: set[int] = set()
    history: list[Reservation] = []
    committed = [0]  # spent + reserved after each step (index 0 = start)

    def used(s: BudgetState) -> int:
        return s.spent_day + s.reserved_day if window == "day" else s.spent_month + s.reserved_month

    for step, (kind, session, amount, over) in enumerate(ops, start=1):
        if kind in ("reserve", "vad") and session not in open_by_session and session not in stopped:
            if kind == "reserve":
                granted, state = try_reserve(state, amount, limits)
                if granted:
                    open_by_session[session] = Reservation(session, amount, False, step)
            else:
                fitted, state = force_reserve(state, amount, limits)
                open_by_session[session] = Reservation(session, amount, True, step)
                if not fitted:
                    stopped.add(session)
            if session in open_by_session and open_by_session[session].opened == step:
                history.append(open_by_session[session])
        elif kind == "settle" and session in open_by_session:
            res = open_by_session.pop(session)
            # over == 0: the estimate was wrong (actual up to 3x + 50 over); else actual <= reserved.
            res.actual = res.reserved * 3 + 50 if over == 0 else res.reserved * (over - 1) // 2
            res.settled = step
            state = settle(state, res.reserved, res.actual)
        committed.append(used(state))
        spent = state.spent_day if window == "day" else state.spent_month

        # The crossing: the last moment spent + reserved was within the limit.
        t0 = max(i for i, value in enumerate(committed) if value <= limit)
        # Reservations open at the crossing, settled after it, may add their excess over the estimate.
        excess = sum(
            max(0, r.actual - r.reserved) for r in history if r.opened <= t0 < r.settled and r.actual is not None
        )
        forced_after = sum(r.actual for r in history if r.forced and r.opened > t0 and r.actual is not None)
        assert spent - limit <= excess + forced_after
        # Every forced reservation after the crossing is refused, so at most one per session.
        forced_sessions = [r.session for r in history if r.forced and r.opened > t0]
        assert len(forced_sessions) == len(set(forced_sessions))
        # No reservation is ever granted past the limit.
        assert all(r.forced or r.opened <= t0 for r in history)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(0, 3000), ops=st.lists(op, max_size=80))
def test_with_honest_estimates_overshoot_is_at_most_one_response_per_session(
    limit: int, ops: list[tuple[str, int, int, int]]
) -> None:
    limits = BudgetLimits(daily_micro_usd=limit)
    state = BudgetState()
    open_by_session: dict[int, int] = {}
    stopped: set[int] = set()
    largest = 0
    for kind, session, amount, over in ops:
        if kind in ("reserve", "vad") and session not in open_by_session and session not in stopped:
            if kind == "reserve":
                granted, state = try_reserve(state, amount, limits)
            else:
                granted, state = force_reserve(state, amount, limits)
                stopped |= set() if granted else {session}
                largest, granted = max(largest, amount), True
            if granted:
                open_by_session[session] = amount
        elif kind == "settle" and session in open_by_session:
            reserved = open_by_session.pop(session)
            state = settle(state, reserved, reserved * over // 3)  # actual <= reserved
    assert state.spent_day <= limit + 6 * largest
    assert state.spent_day + state.reserved_day <= limit + 6 * largest
