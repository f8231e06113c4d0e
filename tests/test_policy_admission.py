"""Admission before the upgrade: each refusal has its own status, code and retry-after."""

import pytest

from policies.actions import RateLimit, RateLimitsRecord
from policies.admission import (
    AdmissionSnapshot,
    Admit,
    Refuse,
    decide_admission,
    model_concurrency_refusal,
    upstream_token_threshold,
)
from policies.budget import BudgetState
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.table import PriceTable

NOW = 1_798_761_600.0 - 3600  # 2026-12-31T23:00:00Z
POLICY = TenantPolicy(
    models=frozenset({"gpt-realtime-2"}),
    max_output_tokens=1024,
    max_concurrent_sessions=2,
    session_starts_per_minute=3,
    budget=BudgetPolicy(daily_micro_usd=1_000_000, monthly_micro_usd=10_000_000),
)


def upstream(remaining: int, limit: int = 100_000, reset: float = 30.0, observed: float = NOW - 10) -> RateLimitsRecord:
    return RateLimitsRecord(
        "vgs_x",
        "ten_x",
        observed,
        (RateLimit("requests", 1000, 999, 60.0), RateLimit("tokens", limit, remaining, reset)),
    )


def test_admits_and_records_the_start() -> None:
    decision = decide_admission(POLICY, "gpt-realtime-2", AdmissionSnapshot(recent_starts=(NOW - 5,)), NOW)
    assert decision == Admit((NOW - 5, NOW))


@pytest.mark.parametrize(
    ("snapshot", "model", "status", "code", "kind", "retry"),
    [
        (AdmissionSnapshot(), "gpt-realtime", 403, "model_not_allowed", "invalid_request_error", None),
        (
            AdmissionSnapshot(active_sessions=2),
            "gpt-realtime-2",
            429,
            "concurrency_limit_exceeded",
            "rate_limit_error",
            1.0,
        ),
        (
            AdmissionSnapshot(recent_starts=(NOW - 50, NOW - 20, NOW - 1)),
            "gpt-realtime-2",
            429,
            "session_rate_limit_exceeded",
            "rate_limit_error",
            10.0,
        ),
        (
            AdmissionSnapshot(budget=BudgetState(1_000_000, 1_000_000)),
            "gpt-realtime-2",
            429,
            "budget_exhausted",
            "insufficient_quota",
            3600.0,
        ),
        (
            AdmissionSnapshot(budget=BudgetState(500_000, 9_000_000, 500_000, 0)),
            "gpt-realtime-2",
            429,
            "budget_exhausted",
            "insufficient_quota",
            3600.0,
        ),
        (
            AdmissionSnapshot(upstream=upstream(remaining=1500)),
            "gpt-realtime-2",
            429,
            "upstream_capacity",
            "rate_limit_error",
            20.0,
        ),
    ],
)
def test_each_refusal_has_a_distinct_code(
    snapshot: AdmissionSnapshot, model: str, status: int, code: str, kind: str, retry: float | None
) -> None:
    decision = decide_admission(POLICY, model, snapshot, NOW)
    assert isinstance(decision, Refuse)
    assert (decision.status, decision.code, decision.type) == (status, code, kind)
    assert decision.retry_after == (pytest.approx(retry) if retry is not None else None)


def test_with_prices_the_budget_must_cover_one_worst_case_response() -> None:
    # 1024 output tokens at $64/1M = 65_536 micro-USD; 60_000 left is not enough.
    snapshot = AdmissionSnapshot(budget=BudgetState(940_000, 940_000))
    assert isinstance(decide_admission(POLICY, "gpt-realtime-2", snapshot, NOW), Admit)
    refused = decide_admission(POLICY, "gpt-realtime-2", snapshot, NOW, DEFAULT_PRICE_TABLE)
    assert isinstance(refused, Refuse) and refused.code == "budget_exhausted"


@pytest.mark.parametrize(
    ("budget", "prices", "message"),
    [
        # Nothing spent yet: running responses' reservations filled the day.
        (
            BudgetState(0, 0, 1_000_000, 1_000_000),
            None,
            "This tenant's daily budget is exhausted: $0.00 spent + $1.00 reserved for responses in progress, "
            "of $1.00.",
        ),
        (
            BudgetState(940_000, 940_000),
            DEFAULT_PRICE_TABLE,
            "This tenant's daily budget is exhausted: $0.94 spent + $0.00 reserved for responses in progress, "
            "of $1.00; one more response may cost up to $0.065536.",
        ),
        (
            BudgetState(600_000, 9_990_000, 400_000, 10_000),
            None,
            "This tenant's daily and monthly budgets are exhausted: daily $0.60 spent + $0.40 reserved for responses "
            "in progress, of $1.00; monthly $9.99 spent + $0.01 reserved for responses in progress, of $10.00.",
        ),
    ],
)
def test_the_budget_refusal_says_what_was_spent_and_what_is_reserved(
    budget: BudgetState, prices: PriceTable | None, message: str
) -> None:
    refused = decide_admission(POLICY, "gpt-realtime-2", AdmissionSnapshot(budget=budget), NOW, prices)
    assert isinstance(refused, Refuse) and refused.message == message


def test_upstream_threshold_is_one_worst_case_response_or_two_percent() -> None:
    assert upstream_token_threshold(POLICY, "gpt-realtime-2", 10_000) == 1024
    assert upstream_token_threshold(POLICY, "gpt-realtime-2", 1_000_000) == 20_000
    assert upstream_token_threshold(TenantPolicy(), "gpt-realtime-2", 10_000) == 32768


def test_upstream_headroom_recovers_once_its_reset_time_has_passed() -> None:
    stale = AdmissionSnapshot(upstream=upstream(remaining=10, reset=5.0, observed=NOW - 6))
    assert isinstance(decide_admission(POLICY, "gpt-realtime-2", stale, NOW), Admit)
    enough = AdmissionSnapshot(upstream=upstream(remaining=50_000))
    assert isinstance(decide_admission(POLICY, "gpt-realtime-2", enough, NOW), Admit)
    no_requests = RateLimitsRecord("s", "t", NOW, (RateLimit("requests", 100, 0, 2.5),))
    refused = decide_admission(POLICY, "gpt-realtime-2", AdmissionSnapshot(upstream=no_requests), NOW)
    assert isinstance(refused, Refuse) and refused.code == "upstream_capacity" and refused.retry_after == 2.5


def test_an_unrestricted_policy_admits_everything() -> None:
    snapshot = AdmissionSnapshot(active_sessions=10_000, recent_starts=tuple(NOW - i for i in range(500)))
    assert isinstance(decide_admission(TenantPolicy(), "anything", snapshot, NOW), Admit)


# -- per-model concurrency caps ---------------------------------------------------------------


def test_a_per_model_cap_parses_round_trips_and_names_a_bad_key() -> None:
    from policies.policy import PolicyError, parse_policy, policy_to_document

    policy = parse_policy({"max_concurrent_sessions_per_model": {"gpt-realtime": 20, "gpt-live-1": 5}})
    assert policy.max_concurrent_sessions_per_model == (("gpt-live-1", 5), ("gpt-realtime", 20))
    assert (policy.model_session_cap("gpt-live-1"), policy.model_session_cap("gpt-live-1.1")) == (5, None)
    document = policy_to_document(policy)
    assert document["max_concurrent_sessions_per_model"] == {"gpt-live-1": 5, "gpt-realtime": 20}
    assert parse_policy(document) == policy
    assert parse_policy({"max_concurrent_sessions_per_model": None}).max_concurrent_sessions_per_model == ()
    for bad, key in [
        ({"gpt-live-1": 0}, "policy.max_concurrent_sessions_per_model.gpt-live-1"),
        ({"gpt-live-1": "5"}, "policy.max_concurrent_sessions_per_model.gpt-live-1"),
        ({"gpt-live-1": None}, "policy.max_concurrent_sessions_per_model.gpt-live-1"),
        ({"gpt-live-1": True}, "policy.max_concurrent_sessions_per_model.gpt-live-1"),
        ({"": 3}, "policy.max_concurrent_sessions_per_model"),
        (["gpt-live-1"], "policy.max_concurrent_sessions_per_model"),
        (5, "policy.max_concurrent_sessions_per_model"),
    ]:
        with pytest.raises(PolicyError) as caught:
            parse_policy({"max_concurrent_sessions_per_model": bad})
        assert caught.value.key == key


def test_a_models_cap_refusal_has_the_concurrency_code() -> None:
    """The shape of the refusal the lease gives (gateway/session/leases.py enforces a model's cap;
    admission itself has no per-model count, see `AdmissionSnapshot`)."""
    policy = TenantPolicy(max_concurrent_sessions=10, max_concurrent_sessions_per_model=(("gpt-live-1", 2),))
    assert policy.model_session_cap("gpt-live-1") == 2
    assert policy.model_session_cap("gpt-live-1.1") is None
    refused = model_concurrency_refusal("gpt-live-1", 2, 2)
    assert (refused.status, refused.code, refused.type, refused.param, refused.retry_after) == (
        429,
        "concurrency_limit_exceeded",
        "rate_limit_error",
        "model",
        1.0,
    )
    assert "'gpt-live-1'" in refused.message and "limit 2" in refused.message
