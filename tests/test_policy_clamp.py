"""Clamping and allowlists: every path, GA and beta names, both levels, with no event loop."""

from typing import Annotated, Any

import pytest
from openai.types.realtime import RealtimeClientEventParam, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from policies.actions import error_event
from policies.clamp import Refused, Rewritten, Unchanged, clamp_token_value, police_client_event
from policies.policy import TenantPolicy

SERVER_EVENT = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEventParam)
POLICY = TenantPolicy(
    models=frozenset({"gpt-realtime-2"}),
    voices=frozenset({"marin", "voice_ok"}),
    tools=frozenset({"lookup", "crm"}),
    max_output_tokens=1024,
)


def session_update(**session: Any) -> dict[str, Any]:
    return {"type": "session.update", "event_id": "evt_c1", "session": {"type": "realtime", **session}}


def response_create(**response: Any) -> dict[str, Any]:
    return {"type": "response.create", "event_id": "evt_c2", "response": response}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inf", 1024),
        (None, 1024),
        (5000, 1024),
        (1024, 1024),
        (10, 10),
        (10.0, 10),
        (1e9, 1024),
        (0, None),
        (-3, None),
        ("INF", None),
        ("100", None),
        (True, None),
        (1.5, None),
        ([], None),
    ],
)
def test_token_values_clamp_to_the_ceiling_or_are_garbage(value: object, expected: int | None) -> None:
    assert clamp_token_value(value, 1024) == expected


@pytest.mark.parametrize("name", ["max_output_tokens", "max_response_output_tokens"])
@pytest.mark.parametrize(("value", "clamped"), [("inf", 1024), (99999, 1024), (None, 1024), (2048.0, 1024)])
@pytest.mark.parametrize("level", ["session", "response"])
def test_too_large_values_are_clamped_under_both_names_at_both_levels(
    name: str, value: object, clamped: int, level: str
) -> None:
    event = session_update(**{name: value}) if level == "session" else response_create(**{name: value})
    result = police_client_event(event, POLICY)
    assert isinstance(result, Rewritten)
    assert result.event[level][name] == clamped
    assert result.paths == (f"{level}.{name}",)
    assert event[level][name] == value  # the input is never mutated
    if name == "max_output_tokens":
        CLIENT_EVENT.validate_python(result.event)


def test_both_names_present_are_both_clamped() -> None:
    result = police_client_event(response_create(max_output_tokens="inf", max_response_output_tokens=8000), POLICY)
    assert isinstance(result, Rewritten)
    assert result.event["response"]["max_output_tokens"] == 1024
    assert result.event["response"]["max_response_output_tokens"] == 1024


@pytest.mark.parametrize("level", ["session", "response"])
def test_values_within_the_ceiling_pass_unchanged(level: str) -> None:
    event = session_update(max_output_tokens=512) if level == "session" else response_create(max_output_tokens=512)
    assert isinstance(police_client_event(event, POLICY), Unchanged)


def test_response_create_without_a_value_gets_the_ceiling_inserted() -> None:
    for event in ({"type": "response.create"}, response_create(instructions="hi")):
        result = police_client_event(event, POLICY)
        assert isinstance(result, Rewritten)
        assert result.event["response"]["max_output_tokens"] == 1024
        CLIENT_EVENT.validate_python(result.event)


def test_beta_shaped_response_create_gets_the_beta_name_inserted() -> None:
    result = police_client_event(response_create(modalities=["text"], voice="marin"), POLICY)
    assert isinstance(result, Rewritten)
    assert result.event["response"] == {"modalities": ["text"], "voice": "marin", "max_response_output_tokens": 1024}


def test_session_update_without_a_value_gets_one_only_until_the_session_carries_the_ceiling() -> None:
    event = session_update(instructions="be brief")
    first = police_client_event(event, POLICY, session_has_ceiling=False)
    assert isinstance(first, Rewritten) and first.event["session"]["max_output_tokens"] == 1024
    CLIENT_EVENT.validate_python(first.event)
    # Later updates that do not mention it keep whatever (lower) value the client chose.
    assert isinstance(police_client_event(event, POLICY, session_has_ceiling=True), Unchanged)
    beta = {"type": "session.update", "session": {"voice": "marin"}}
    result = police_client_event(beta, POLICY, session_has_ceiling=False)
    assert isinstance(result, Rewritten) and result.event["session"]["max_response_output_tokens"] == 1024


def test_transcription_sessions_are_not_given_an_output_ceiling() -> None:
    event = {"type": "session.update", "session": {"type": "transcription"}}
    assert isinstance(police_client_event(event, POLICY, session_has_ceiling=False), Unchanged)


@pytest.mark.parametrize("level", ["session", "response"])
@pytest.mark.parametrize("value", ["INF", 0, -1, "lots", True, 2.5, {"n": 1}])
def test_garbage_token_values_are_refused(level: str, value: object) -> None:
    event = session_update(max_output_tokens=value) if level == "session" else response_create(max_output_tokens=value)
    result = police_client_event(event, POLICY)
    assert isinstance(result, Refused)
    assert result.detail.code == "invalid_value" and result.detail.param == f"{level}.max_output_tokens"
    assert_valid_error(result, event["event_id"])


def test_no_ceiling_means_no_clamp() -> None:
    assert isinstance(police_client_event(response_create(max_output_tokens="inf"), TenantPolicy()), Unchanged)


def assert_valid_error(result: Refused, client_event_id: str | None) -> None:
    event = error_event(result.detail, "event_vg1")
    SERVER_EVENT.validate_python(event)
    assert event["error"]["type"] == "invalid_request_error"
    assert event["error"]["event_id"] == client_event_id


REFUSALS = [
    (session_update(model="gpt-realtime"), "model_not_allowed", "session.model"),
    (session_update(audio={"output": {"voice": "alloy"}}), "voice_not_allowed", "session.audio.output.voice"),
    (
        session_update(audio={"output": {"voice": {"id": "voice_bad"}}}),
        "voice_not_allowed",
        "session.audio.output.voice.id",
    ),
    ({"type": "session.update", "session": {"voice": "echo"}}, "voice_not_allowed", "session.voice"),
    (response_create(audio={"output": {"voice": "cedar"}}), "voice_not_allowed", "response.audio.output.voice"),
    (response_create(voice="ash"), "voice_not_allowed", "response.voice"),
    (
        session_update(tools=[{"type": "function", "name": "lookup"}, {"type": "function", "name": "rm_rf"}]),
        "tool_not_allowed",
        "session.tools[1].name",
    ),
    (
        response_create(tools=[{"type": "mcp", "server_label": "evil", "server_url": "https://x"}]),
        "tool_not_allowed",
        "response.tools[0].server_label",
    ),
    (response_create(tools=[{"type": "web_search"}]), "tool_not_allowed", "response.tools[0].type"),
]


@pytest.mark.parametrize(("event", "code", "param"), REFUSALS)
def test_disallowed_model_voice_and_tools_are_refused_naming_the_policy(event: Any, code: str, param: str) -> None:
    result = police_client_event(event, POLICY)
    assert isinstance(result, Refused)
    assert (result.detail.code, result.detail.param) == (code, param)
    assert "policy" in result.detail.message
    assert_valid_error(result, event.get("event_id"))


def test_allowed_model_voice_and_tools_pass() -> None:
    event = session_update(
        model="gpt-realtime-2",
        max_output_tokens=100,
        audio={"output": {"voice": {"id": "voice_ok"}}},
        tools=[
            {"type": "function", "name": "lookup"},
            {"type": "mcp", "server_label": "crm", "server_url": "https://x"},
        ],
    )
    assert isinstance(police_client_event(event, POLICY), Unchanged)


def test_other_events_and_malformed_bodies_are_not_judged() -> None:
    assert isinstance(police_client_event({"type": "input_audio_buffer.commit"}, POLICY), Unchanged)
    assert isinstance(police_client_event({"type": "session.update", "session": "nope"}, POLICY), Unchanged)
