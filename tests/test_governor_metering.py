"""The governor meters a session with no event loop: events and `now` in, actions out."""

import copy
from typing import Annotated, Any

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter

from policies.actions import (
    Forward,
    Persist,
    RateLimitsRecord,
    SendToClient,
    SessionInfoRecord,
    TranscriptionRecord,
    UsageRecord,
)
from policies.governor import SessionGovernor, SessionIdentity
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.fixtures import realtime_server_events
from tests.support.live_conformance import EXAMPLES

SERVER = realtime_server_events()
SERVER_EVENT = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
NOW = 1_800_000_000.0

# The fixture's response.done usage: 119 text in (64 cached), 13 audio in, 30 text out, 91 audio out.
# Costs by hand, rates from docs/pricing.md in micro-USD per 1M tokens, rounded half up once:
# gpt-realtime       55 x 4_000_000 + 64 x 400_000 + 13 x 32_000_000 + 30 x 16_000_000 + 91 x 64_000_000
#                    = 6_965_600_000 -> 6_965.6 -> 6_966
GPT_REALTIME_COST = 6_966
# gpt-realtime-mini  55 x 600_000 + 64 x 60_000 + 13 x 10_000_000 + 30 x 2_400_000 + 91 x 20_000_000
#                    = 2_058_840_000 -> 2_058.84 -> 2_059
GPT_REALTIME_MINI_COST = 2_059
# The fixture's transcription usage: 17 audio tokens in, 9 out, at gpt-4o-mini-transcribe
#                    17 x 3_000_000 + 9 x 5_000_000 = 96_000_000 -> 96
MINI_TRANSCRIBE_COST = 96
PRICE_VERSION = "2026-12-06"  # docs/pricing.md: the default table's version


def governor(model: str = "gpt-realtime") -> SessionGovernor:
    return SessionGovernor(SessionIdentity("vgs_test000000001", "ten_a", model), DEFAULT_PRICE_TABLE)


def persisted(actions: Any) -> list[Any]:
    return [a.record for a in actions if isinstance(a, Persist)]


def test_response_done_is_forwarded_and_priced_once() -> None:
    gov = governor()
    event = SERVER["response.done"]
    actions = gov.on_server_event(event, NOW)
    assert isinstance(actions[0], Forward)
    [record] = persisted(actions)
    assert isinstance(record, UsageRecord)
    assert record.cost_micro_usd == GPT_REALTIME_COST
    assert record.response_id == event["response"]["id"]
    assert (record.input_text_tokens, record.cached_text_tokens, record.output_audio_tokens) == (119, 64, 91)
    assert record.price_version == PRICE_VERSION
    assert record.occurred_at == NOW
    # The same response_id again (a replayed frame) is forwarded but never billed twice.
    again = gov.on_server_event(event, NOW + 1)
    assert persisted(again) == []
    assert gov.totals.responses == 1 and gov.totals.cost_micro_usd == record.cost_micro_usd


def test_model_comes_from_session_created_and_prices_follow_it() -> None:
    gov = governor(model="gpt-realtime")
    created = copy.deepcopy(SERVER["session.created"])
    created["session"]["model"] = "gpt-realtime-mini"
    [info] = persisted(gov.on_server_event(created, NOW))
    assert isinstance(info, SessionInfoRecord) and info.model == "gpt-realtime-mini"
    [record] = persisted(gov.on_server_event(SERVER["response.done"], NOW))
    assert record.model == "gpt-realtime-mini"
    assert record.cost_micro_usd == GPT_REALTIME_MINI_COST


def test_rate_limits_are_recorded() -> None:
    [record] = persisted(governor().on_server_event(SERVER["rate_limits.updated"], NOW))
    assert isinstance(record, RateLimitsRecord)
    assert [(r.name, r.limit, r.remaining) for r in record.limits] == [
        ("requests", 1000, 999),
        ("tokens", 50000, 49134),
    ]


def test_input_transcription_is_billed_at_the_asr_model_once() -> None:
    gov = governor()
    updated = copy.deepcopy(SERVER["session.updated"])
    updated["session"].setdefault("audio", {}).setdefault("input", {})["transcription"] = {
        "model": "gpt-4o-mini-transcribe"
    }
    gov.on_server_event(updated, NOW)
    event = SERVER["conversation.item.input_audio_transcription.completed"]
    [record] = persisted(gov.on_server_event(event, NOW))
    assert isinstance(record, TranscriptionRecord)
    assert record.model == "gpt-4o-mini-transcribe" and record.cost_micro_usd == MINI_TRANSCRIBE_COST
    assert persisted(gov.on_server_event(event, NOW)) == []


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-realtime-whisper"])
def test_a_transcription_session_bills_duration_usage_per_minute(model: str) -> None:
    gov = SessionGovernor(
        SessionIdentity("vgs_test000000002", "ten_a", "", intent="transcription"), DEFAULT_PRICE_TABLE
    )
    session = {"type": "transcription", "audio": {"input": {"transcription": {"model": model}, "turn_detection": None}}}
    gov.on_server_event({"type": "session.updated", "event_id": "ev_1", "session": session}, NOW)
    event = EXAMPLES["transcription"]["conversation.item.input_audio_transcription.completed.duration_usage"]
    [record] = persisted(gov.on_server_event(event, NOW))
    # 3.2 s at $0.017 / min: 3_200 ms x 17_000 micro-USD / 60_000 = 906.67 -> 907
    assert (record.model, record.usage_type, record.duration_ms, record.cost_micro_usd) == (
        model,
        "duration",
        3_200,
        907,
    )
    assert record.estimated is False
    assert persisted(gov.on_session_end(NOW + 1)) == []  # no audio went through this governor: no backstop


@pytest.mark.parametrize(
    "bad",
    [{"type": 7}, {"no_type": True}, {"type": None}],
)
def test_client_event_without_a_type_gets_a_ga_error_event(bad: dict[str, Any]) -> None:
    [action] = governor().on_client_event(bad, NOW)
    assert isinstance(action, SendToClient)
    SERVER_EVENT.validate_python(action.event)
    assert action.event["error"]["code"] == "invalid_event"


def test_garbage_becomes_an_error_event_that_the_sdk_parses() -> None:
    [action] = governor().on_client_garbage("Invalid JSON: unexpected character.", NOW)
    assert isinstance(action, SendToClient)
    parsed = SERVER_EVENT.validate_python(action.event)
    assert parsed.type == "error" and action.event["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("kind", sorted(SERVER))
def test_every_ga_server_event_is_forwarded_and_never_raises(kind: str) -> None:
    actions = governor().on_server_event(SERVER[kind], NOW)
    assert isinstance(actions[0], Forward)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.done"},
        {"type": "response.done", "response": "nope"},
        {"type": "response.done", "response": {"id": 5, "usage": {}}},
        {"type": "rate_limits.updated", "rate_limits": [{"name": 1}, "x", {"name": "tokens", "limit": "a"}]},
        {"type": "session.created", "session": {"audio": {"output": {"voice": {"id": 3}}}}},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": 1, "usage": None},
    ],
)
def test_malformed_server_events_are_forwarded_unbilled(event: dict[str, Any]) -> None:
    actions = governor().on_server_event(event, NOW)
    assert isinstance(actions[0], Forward)
    assert all(not isinstance(r, UsageRecord) for r in persisted(actions))


def test_session_expired_error_marks_the_session() -> None:
    gov = governor()
    gov.on_server_event(
        {
            "type": "error",
            "event_id": "e",
            "error": {"type": "invalid_request_error", "code": "session_expired", "message": "x"},
        },
        NOW,
    )
    assert gov.expired
