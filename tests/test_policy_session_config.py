"""A session config fixed in one HTTP request (client secrets, WebRTC offers): decided with no I/O and no clock."""

from __future__ import annotations

from typing import Any

import pytest

from policies.actions import ErrorDetail
from policies.policy import TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.session_config import (
    PolicedSession,
    SessionRefused,
    default_model,
    police_expires_after,
    police_session,
    policy_session,
    secret_expires_at,
)

PRICES = DEFAULT_PRICE_TABLE
POLICY = TenantPolicy(
    models=frozenset({"gpt-realtime", "gpt-realtime-mini"}),
    voices=frozenset({"marin"}),
    tools=frozenset({"lookup_order"}),
    max_output_tokens=300,
    expires_after_max_seconds=120,
)


# -- the default model ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        (None, "gpt-realtime"),  # no allowlist: upstream's default
        (frozenset(), "gpt-realtime"),  # an empty list allows nothing; admission refuses it by name
        (frozenset({"gpt-realtime-mini"}), "gpt-realtime-mini"),
        (frozenset({"gpt-realtime-mini", "gpt-realtime-2"}), "gpt-realtime-2"),  # the first by name
        (frozenset({"gpt-realtime", "gpt-realtime-mini"}), "gpt-realtime"),
        # GPT-Live, translation and transcription models sort first but cannot run a Realtime session.
        (frozenset({"gpt-live-1", "gpt-realtime-mini", "gpt-realtime-2"}), "gpt-realtime-2"),
        (frozenset({"gpt-4o-transcribe", "gpt-realtime-translate", "gpt-realtime-mini"}), "gpt-realtime-mini"),
        (frozenset({"gpt-live-1", "gpt-live-transcribe"}), "gpt-live-1"),  # no Realtime model: admission refuses
    ],
)
def test_the_default_model_is_upstreams_when_allowed_else_the_allowlists_first(
    models: frozenset[str] | None, expected: str
) -> None:
    assert default_model(TenantPolicy(models=models), PRICES) == expected


def test_upstreams_default_wins_over_a_model_that_sorts_before_it() -> None:
    # The case where the two former rules disagreed: `Enforcement.admit` took the allowlist's
    # first model ("gpt-4o-realtime-preview") for a transcription session's budget check, the
    # HTTP routes took "gpt-realtime". One rule now: upstream's default, because it is allowed.
    policy = TenantPolicy(models=frozenset({"gpt-realtime", "gpt-4o-realtime-preview"}))
    assert default_model(policy, PRICES) == "gpt-realtime"


# -- policing a session ---------------------------------------------------------------------


def test_a_realtime_session_gets_the_model_and_the_ceiling() -> None:
    verdict = police_session(
        {"type": "realtime", "model": "gpt-realtime-mini", "max_output_tokens": 4096}, POLICY, PRICES
    )
    assert verdict == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime-mini", "max_output_tokens": 300}, "gpt-realtime-mini"
    )


def test_an_empty_session_is_filled_in() -> None:
    verdict = police_session({}, TenantPolicy(models=frozenset({"gpt-realtime-mini"}), max_output_tokens=300), PRICES)
    assert verdict == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime-mini", "max_output_tokens": 300}, "gpt-realtime-mini"
    )


def test_a_lower_ceiling_and_other_fields_are_kept_as_sent() -> None:
    session = {"type": "realtime", "model": "gpt-realtime", "max_output_tokens": 50, "instructions": "Be brief."}
    verdict = police_session(session, POLICY, PRICES)
    assert verdict == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime", "max_output_tokens": 50, "instructions": "Be brief."},
        "gpt-realtime",
    )


def test_the_input_is_never_mutated() -> None:
    session: dict[str, Any] = {"max_output_tokens": 4096}
    police_session(session, POLICY, PRICES)
    assert session == {"max_output_tokens": 4096}


def test_a_transcription_session_admits_no_model_and_gets_no_ceiling() -> None:
    verdict = police_session({"type": "transcription"}, POLICY, PRICES)
    assert verdict == PolicedSession({"type": "transcription"}, None)


def test_an_unrestricted_policy_only_fills_the_type_and_model() -> None:
    assert police_session({}, TenantPolicy(), PRICES) == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime"}, "gpt-realtime"
    )


@pytest.mark.parametrize(
    ("session", "refused"),
    [
        (
            {"type": "conversation"},
            SessionRefused(
                400,
                ErrorDetail(
                    message="'session.type' must be 'realtime' or 'transcription'.",
                    code="invalid_value",
                    param="session.type",
                ),
            ),
        ),
        (
            {"type": "realtime", "model": ""},
            SessionRefused(
                400,
                ErrorDetail(
                    message="'session.model' must be a non-empty string.", code="invalid_value", param="session.model"
                ),
            ),
        ),
        (
            {"model": 7},
            SessionRefused(
                400,
                ErrorDetail(
                    message="'session.model' must be a non-empty string.", code="invalid_value", param="session.model"
                ),
            ),
        ),
        (
            {"type": "realtime", "max_output_tokens": "lots"},
            SessionRefused(
                400,
                ErrorDetail(
                    message="Invalid 'session.max_output_tokens': expected an integer >= 1 or \"inf\".",
                    code="invalid_value",
                    param="session.max_output_tokens",
                ),
            ),
        ),
    ],
)
def test_a_malformed_session_is_a_400(session: dict[str, Any], refused: SessionRefused) -> None:
    assert police_session(session, POLICY, PRICES) == refused


@pytest.mark.parametrize(
    ("session", "code", "param", "list_name"),
    [
        ({"model": "gpt-4o-realtime-preview"}, "model_not_allowed", "session.model", "models"),
        ({"audio": {"output": {"voice": "alloy"}}}, "voice_not_allowed", "session.audio.output.voice", "voices"),
        ({"tools": [{"type": "function", "name": "wire_money"}]}, "tool_not_allowed", "session.tools[0].name", "tools"),
    ],
)
def test_what_a_policy_list_does_not_allow_is_a_403_naming_the_list(
    session: dict[str, Any], code: str, param: str, list_name: str
) -> None:
    verdict = police_session({"type": "realtime", **session}, POLICY, PRICES)
    assert isinstance(verdict, SessionRefused)
    assert (verdict.status, verdict.detail.code, verdict.detail.param) == (403, code, param)
    assert f"(see the policy's '{list_name}' list)" in verdict.detail.message


# -- the session of a raw offer -------------------------------------------------------------


def test_a_raw_offer_stays_raw_when_the_policy_adds_nothing() -> None:
    assert policy_session(TenantPolicy(voices=frozenset({"marin"}), tools=frozenset({"x"})), PRICES) is None


def test_a_raw_offer_gets_the_allowlisted_model_and_the_ceiling() -> None:
    assert policy_session(POLICY, PRICES) == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime", "max_output_tokens": 300}, "gpt-realtime"
    )
    only_mini = TenantPolicy(models=frozenset({"gpt-realtime-mini"}))
    assert policy_session(only_mini, PRICES) == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime-mini"}, "gpt-realtime-mini"
    )
    assert policy_session(TenantPolicy(max_output_tokens=64), PRICES) == PolicedSession(
        {"type": "realtime", "model": "gpt-realtime", "max_output_tokens": 64}, "gpt-realtime"
    )


def test_a_policy_allowing_no_model_refuses_a_raw_offer() -> None:
    verdict = policy_session(TenantPolicy(models=frozenset()), PRICES)
    assert isinstance(verdict, SessionRefused)
    assert (verdict.status, verdict.detail.code, verdict.detail.param) == (403, "model_not_allowed", "session.model")


# -- a client secret's lifetime -------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "ceiling", "expected"),
    [
        (None, 120, {"anchor": "created_at", "seconds": 120}),  # upstream's 600 s default is above the cap
        (None, 600, None),  # the default is within the cap: nothing to add
        (None, 7200, None),
        ({"anchor": "created_at", "seconds": 3600}, 120, {"anchor": "created_at", "seconds": 120}),
        ({"anchor": "created_at", "seconds": 30}, 120, {"anchor": "created_at", "seconds": 30}),
        ({"seconds": 90}, 120, {"anchor": "created_at", "seconds": 90}),
        ({}, 120, {"anchor": "created_at", "seconds": 120}),  # no seconds: upstream's 600, capped
        ({}, 7200, {"anchor": "created_at", "seconds": 600}),
        ({"anchor": "x", "seconds": 5, "extra": 1}, 120, {"anchor": "x", "seconds": 5, "extra": 1}),
    ],
)
def test_a_secrets_lifetime_is_capped_at_the_policys(
    requested: object, ceiling: int, expected: dict[str, Any] | None
) -> None:
    assert police_expires_after(requested, TenantPolicy(expires_after_max_seconds=ceiling)) == expected


@pytest.mark.parametrize(
    ("requested", "message", "param"),
    [
        ("soon", "'expires_after' must be an object.", "expires_after"),
        ([60], "'expires_after' must be an object.", "expires_after"),
        ({"seconds": "soon"}, "'expires_after.seconds' must be an integer.", "expires_after.seconds"),
        ({"seconds": True}, "'expires_after.seconds' must be an integer.", "expires_after.seconds"),
        ({"seconds": 60.5}, "'expires_after.seconds' must be an integer.", "expires_after.seconds"),
    ],
)
def test_a_malformed_lifetime_is_a_400(requested: object, message: str, param: str) -> None:
    assert police_expires_after(requested, POLICY) == SessionRefused(
        400, ErrorDetail(message=message, code="invalid_value", param=param)
    )


@pytest.mark.parametrize(
    ("minted", "request_body", "expected"),
    [
        ({"expires_at": 1_800_000_600}, {"expires_after": {"seconds": 30}}, 1_800_000_600.0),  # upstream's word wins
        ({}, {"expires_after": {"anchor": "created_at", "seconds": 30}}, 1_800_000_030.0),
        ({}, {}, 1_800_000_600.0),  # upstream's default lifetime
        ({"expires_at": True}, {"expires_after": {"seconds": True}}, 1_800_000_600.0),  # booleans are not times
        ({"expires_at": "later"}, {"expires_after": None}, 1_800_000_600.0),
    ],
)
def test_a_minted_secret_expires_when_upstream_says_else_when_asked(
    minted: dict[str, Any], request_body: dict[str, Any], expected: float
) -> None:
    assert secret_expires_at(minted, request_body, 1_800_000_000.0) == expected
