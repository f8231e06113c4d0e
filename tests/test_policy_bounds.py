"""A policy holds only values every later step can carry: bounded integers, finite seconds, budgets
that fit a signed 64-bit count of micro-USD. An out-of-range value is a `PolicyError` naming its key,
never a policy that fails each session of its tenant later (orjson, Redis and Postgres stop at 64 bits)."""

from __future__ import annotations

import math

import orjson
import pytest

from policies.policy import (
    MAX_BUDGET_USD,
    MAX_POLICY_INT,
    PolicyError,
    parse_policy,
    parse_stored_policy,
    policy_to_document,
)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"max_output_tokens": 2**64}, "policy.max_output_tokens"),
        ({"max_output_tokens": 2**31}, "policy.max_output_tokens"),
        ({"max_session_tokens": 10**40}, "policy.max_session_tokens"),
        ({"max_concurrent_sessions": 2**63}, "policy.max_concurrent_sessions"),
        ({"session_starts_per_minute": 2**64}, "policy.session_starts_per_minute"),
        ({"expires_after_max_seconds": 2**64}, "policy.expires_after_max_seconds"),
        ({"max_concurrent_sessions_per_model": {"gpt-realtime-2": 2**64}}, "policy.max_concurrent_sessions_per_model"),
        ({"max_session_seconds": 10**400}, "policy.max_session_seconds"),
        ({"max_session_seconds": math.inf}, "policy.max_session_seconds"),
        ({"idle_timeout_seconds": math.nan}, "policy.idle_timeout_seconds"),
        ({"budget": {"daily_usd": MAX_BUDGET_USD + 1}}, "policy.budget.daily_usd"),
        ({"budget": {"monthly_usd": 10**5000}}, "policy.budget.monthly_usd"),
        ({"budget": {"daily_usd": "99999999999999.5"}}, "policy.budget.daily_usd"),
        ({"budget": {"alert_at": [math.nan]}}, "policy.budget.alert_at"),
    ],
)
def test_values_past_what_a_session_can_carry_are_refused_with_their_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(doc)
    assert refused.value.key.startswith(key)


def test_the_largest_values_accepted_still_serialize_for_every_consumer() -> None:
    policy = parse_policy(
        {
            "max_output_tokens": MAX_POLICY_INT,
            "max_session_tokens": MAX_POLICY_INT,
            "max_concurrent_sessions": MAX_POLICY_INT,
            "max_session_seconds": 10**8,
            "budget": {"daily_usd": MAX_BUDGET_USD, "monthly_usd": str(MAX_BUDGET_USD)},
        }
    )
    assert policy.max_output_tokens == 2**31 - 1
    assert policy.budget.daily_micro_usd == 10**18 < 2**63
    assert orjson.loads(orjson.dumps(policy_to_document(policy)))["max_output_tokens"] == 2**31 - 1
    assert orjson.dumps({"max_output_tokens": policy.max_output_tokens})  # what the clamp sends upstream


@pytest.mark.parametrize("amount", ["²", "1.²", "٣", "3.٣"])
def test_a_budget_amount_takes_ascii_digits_only(amount: str) -> None:
    # Found by a review: "²" passed `isdigit` and then failed `int` (a 500), "٣" was read as 3 USD.
    with pytest.raises(PolicyError) as refused:
        parse_policy({"budget": {"daily_usd": amount}})
    assert refused.value.key == "policy.budget.daily_usd"


def test_a_policy_stored_before_the_bounds_is_read_at_the_bounds() -> None:
    # A document an earlier release stored (it did not bound its numbers) must still load, or the
    # tenant could neither open a session nor have its policy changed: past a bound reads as the bound.
    stored = {
        "models": ["gpt-realtime"],
        "max_output_tokens": 2**64,
        "max_session_seconds": 10**12,
        "max_concurrent_sessions_per_model": {"gpt-realtime": 2**63},
        "budget": {"daily_usd": "99999999999999999999.000000", "monthly_usd": 10**20},
    }
    with pytest.raises(PolicyError):
        parse_policy(stored)
    policy = parse_stored_policy(stored)
    assert (policy.max_output_tokens, policy.max_session_seconds) == (MAX_POLICY_INT, float(10**8))
    assert policy.max_concurrent_sessions_per_model == (("gpt-realtime", MAX_POLICY_INT),)
    assert policy.budget.daily_micro_usd == policy.budget.monthly_micro_usd == MAX_BUDGET_USD * 1_000_000
    assert policy.models == frozenset({"gpt-realtime"}) and policy.max_session_tokens is None
    with pytest.raises(PolicyError):  # anything else invalid is still refused
        parse_stored_policy({**stored, "max_output_tokens": "lots"})
    # An earlier release read "٣" (Arabic-Indic three) as 3 USD and stored it: it still means that.
    legacy = parse_stored_policy({"budget": {"daily_usd": "\u0663", "monthly_usd": "\u0663\u0660.\u0665"}})
    assert (legacy.budget.daily_micro_usd, legacy.budget.monthly_micro_usd) == (3_000_000, 30_500_000)
