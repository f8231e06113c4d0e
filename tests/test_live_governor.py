"""The pure GPT-Live core: clamping session.start/update, metering by time and tokens, live limits.

No event loop and no I/O: events in, actions out. Every expected micro-USD figure is worked out
by hand in the comment beside it, from the prices written here ($0.05/min active, $0.02/min
standby; a backend at $1.25 / $0.125 / $10.00 per 1M tokens).
"""

from __future__ import annotations

from typing import Any

from policies.actions import (
    CloseSession,
    Forward,
    ForwardRewritten,
    RecordSpend,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
)
from policies.live.config import LiveRefusal, LiveRules, police_start, police_update
from policies.live.governor import LiveGovernor, LiveLimitsConfig
from policies.live.meter import LiveIdentity, LiveMeter
from policies.live.records import BookLiveUsage, LiveUsageRecord
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.rates import DurationPrice, TierMultiplier, TokenPrice
from policies.prices.table import PriceTable

PRICES = PriceTable(
    version="test-1",
    models=DEFAULT_PRICE_TABLE.models,
    transcription=DEFAULT_PRICE_TABLE.transcription,
    responses={"gpt-5.5": TokenPrice(text_in=1_250_000, cached_text_in=125_000, text_out=10_000_000)},
    durations={"gpt-live-1": DurationPrice(per_minute=50_000, standby_per_minute=20_000)},
    service_tiers={"flex": TierMultiplier(1, 2), "priority": TierMultiplier(2, 1)},
)
START: dict[str, Any] = {
    "model": "gpt-live-1",
    "audio": {"output": {"voice": "marin"}},
    "delegation": {
        "type": "responses",
        "responses": {
            "model": "gpt-5.5",
            "max_output_tokens": 4096,
            "service_tier": "priority",
            "reasoning": {"effort": "xhigh", "summary": "auto"},
            "tools": [{"type": "function", "name": "lookup"}],
        },
    },
}


def booked(actions: list[Any]) -> list[LiveUsageRecord]:
    return [a.record for a in actions if isinstance(a, BookLiveUsage)]


def governor(policy: TenantPolicy | None = None, **config: float) -> LiveGovernor:
    ident = LiveIdentity("vgs_1", "ten_1", "", "websocket")
    return LiveGovernor(ident, PRICES, policy, 1000.0, LiveLimitsConfig(**config))


# -- clamping ---------------------------------------------------------------------------------


def test_session_start_clamps_the_delegated_backend_and_never_adds_unknown_keys() -> None:
    rules = LiveRules(tools=frozenset({"lookup"}), max_output_tokens=512)
    policed = police_start(START, rules, PRICES)
    assert not isinstance(policed, LiveRefusal)
    responses = policed.session["delegation"]["responses"]
    assert responses["max_output_tokens"] == 512
    assert responses["service_tier"] == "default"  # priority bills double: clamped
    assert responses["reasoning"] == {"effort": "high", "summary": "auto"}
    assert set(responses) == set(START["delegation"]["responses"])  # same keys, nothing added
    assert START["delegation"]["responses"]["max_output_tokens"] == 4096  # the client's copy is untouched


def test_session_start_inserts_the_output_ceiling_only_where_the_server_takes_it() -> None:
    session = {"model": "gpt-live-1", "delegation": {"type": "responses", "responses": {"model": "gpt-5.5"}}}
    policed = police_start(session, LiveRules(max_output_tokens=300), PRICES)
    assert not isinstance(policed, LiveRefusal)
    assert policed.session["delegation"]["responses"] == {"model": "gpt-5.5", "max_output_tokens": 300}
    plain = police_start({"model": "gpt-live-1"}, LiveRules(max_output_tokens=300), PRICES)
    assert not isinstance(plain, LiveRefusal) and plain.session == {"model": "gpt-live-1"} and not plain.clamped


def test_disallowed_model_voice_and_tool_are_refused_with_their_param() -> None:
    tools = frozenset({"lookup"})
    cases = [
        (LiveRules(models=frozenset({"gpt-live-1.1"}), tools=tools), "model_not_allowed", "session.model"),
        (LiveRules(voices=frozenset({"cedar"}), tools=tools), "voice_not_allowed", "session.audio.output.voice"),
        (LiveRules(), "tool_not_allowed", "session.delegation.responses.tools[0]"),
        (
            LiveRules(models=frozenset({"gpt-live-1"}), tools=tools),
            "model_not_allowed",
            "session.delegation.responses.model",
        ),
    ]
    for rules, code, param in cases:
        refusal = police_start(START, rules, PRICES)
        assert isinstance(refusal, LiveRefusal) and (refusal.code, refusal.param) == (code, param)
    unpriced = police_start({"model": "gpt-live-9"}, LiveRules(), PRICES)
    assert isinstance(unpriced, LiveRefusal) and unpriced.code == "model_not_priced"


def test_session_update_clamps_what_it_changes_and_leaves_omitted_fields_alone() -> None:
    rules = LiveRules(max_output_tokens=512)
    update = {"delegation": {"type": "responses", "responses": {"max_output_tokens": 99_999}}}
    policed = police_update(update, rules)
    assert not isinstance(policed, LiveRefusal)
    assert policed.session == {"delegation": {"type": "responses", "responses": {"max_output_tokens": 512}}}
    untouched = police_update(
        {"delegation": {"type": "responses", "responses": {"text": {"verbosity": "high"}}}}, rules
    )
    assert not isinstance(untouched, LiveRefusal) and not untouched.clamped
    hosted = police_update(
        {"delegation": {"type": "responses", "responses": {"tools": [{"type": "web_search"}]}}}, rules
    )
    assert isinstance(hosted, LiveRefusal) and hosted.code == "tool_not_allowed"


def test_the_governor_refuses_a_first_event_that_is_not_session_start() -> None:
    gov = governor()
    actions = gov.on_client_event({"type": "session.update", "event_id": "e1", "session": {}}, 1000.0)
    error = next(a.event for a in actions if isinstance(a, SendToClient))
    assert error["error"]["code"] == "session_not_started" and error["client_event_id"] == "e1"
    assert CloseSession(4010, "session.start refused", "start_refused") in actions


def test_the_governor_forwards_a_clean_start_byte_for_byte_and_rewrites_a_clamped_one() -> None:
    clean = governor()
    assert clean.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0) == [Forward()]
    clamped = governor(TenantPolicy(max_output_tokens=64, tools=frozenset({"lookup"})))
    actions = clamped.on_client_event({"type": "session.start", "session": START}, 1000.0)
    rewritten = next(a.event for a in actions if isinstance(a, ForwardRewritten))
    assert rewritten["session"]["delegation"]["responses"]["max_output_tokens"] == 64


def test_a_second_session_start_is_refused_and_never_reaches_upstream() -> None:
    # Found by a hostile review: once live (set at the first start, before upstream confirms it), a
    # second `session.start` was forwarded unpoliced: after upstream refused the first start, a
    # second one on another model and a forbidden voice ran upstream, booked at the first model.
    gov = governor(TenantPolicy(models=frozenset({"gpt-live-1"}), voices=frozenset({"marin"})))
    assert gov.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0) == [Forward()]
    second = {"type": "session.start", "event_id": "e2", "session": {"model": "gpt-live-1.1", "voice": "alloy"}}
    actions = gov.on_client_event(second, 1001.0)
    assert [type(a) for a in actions] == [SendToClient]
    error = actions[0].event
    assert (error["error"]["code"], error["error"]["param"], error["client_event_id"]) == (
        "session_already_started",
        "type",
        "e2",
    )
    assert gov.identity.model == "gpt-live-1"
    # Held behind a start that waits for its budget window, it is refused when the window is granted.
    limited = governor(TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10_000)), reserve_ahead_s=6.0)
    started = limited.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
    reserve = next(a for a in started if isinstance(a, ReserveBudget))
    assert limited.on_client_event(second, 1000.1) == []
    released = limited.on_reservation(reserve.reservation_id, True, 1000.2)
    assert [type(a) for a in released] == [SendToUpstream, SendToClient]
    assert released[1].event["error"]["code"] == "session_already_started"


def test_a_start_upstream_refuses_closes_the_session_and_a_later_error_does_not() -> None:
    refused = governor()
    refused.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
    error = {"type": "error", "error": {"code": "unknown_parameter", "message": "x"}}
    actions = refused.on_server_event(error, 1000.1)
    assert Forward() in actions and CloseSession(4010, "session.start refused", "start_refused") in actions
    assert refused.phase == "closed"
    started = governor()
    started.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
    started.on_server_event({"type": "session.started", "session": {"id": "sess_1"}}, 1000.1)
    assert started.on_server_event(error, 1001.0) == [Forward()]  # an error later is the client's business


# -- metering ---------------------------------------------------------------------------------


def test_cumulative_usage_replaces_and_the_session_is_rounded_once() -> None:
    meter = LiveMeter(LiveIdentity("vgs_1", "ten_1", "gpt-live-1"), PRICES)
    first = meter.on_usage({"seconds": 1.0}, 1.0)  # 1 s = 833.33 -> 833
    again = meter.on_usage({"seconds": 1.0}, 2.0)  # the same figure again: nothing new
    second = meter.on_usage({"seconds": 2.0}, 3.0)  # 2 s = 1,666.67 -> 1,667: books 834
    last = meter.on_usage({"seconds": 3.0}, 4.0, final=True)  # 3 s = 2,500 exactly: books 833
    assert [r.cost_micro_usd for r in first + again + second + last] == [833, 834, 833]
    assert sum(r.cost_micro_usd for r in first + second + last) == 2_500
    assert [r.usage_id for r in first + second + last] == ["1000:0", "2000:0", "3000:0"]
    assert meter.on_usage({"seconds": 9.0}, 5.0) == []  # after session.closed nothing more


def test_active_and_paused_time_at_their_rates_and_the_webrtc_initialisation_charge() -> None:
    meter = LiveMeter(LiveIdentity("vgs_2", "ten_1", "gpt-live-1", "webrtc"), PRICES)
    opening = meter.opening(0.0)  # 15 s prepaid: 15 x 833.33 = 12,500
    assert [(r.active_ms, r.cost_micro_usd) for r in opening] == [(15_000, 12_500)]
    assert meter.on_usage({"seconds": 15.0, "active_seconds": 15, "paused_seconds": 0}, 5.0) == []
    # (107 x 50,000 + 25 x 20,000) / 60 = 97,500 in all: 85,000 more.
    closed = meter.on_usage({"seconds": 132.0, "active_seconds": 107, "paused_seconds": 25}, 9.0, final=True)
    assert [(r.active_ms, r.standby_ms, r.cost_micro_usd) for r in closed] == [(107_000, 25_000, 85_000)]


def test_a_session_closed_without_session_closed_is_estimated_from_the_wall_clock() -> None:
    meter = LiveMeter(LiveIdentity("vgs_3", "ten_1", "gpt-live-1"), PRICES)
    meter.on_usage({"seconds": 30.0}, 100.0)  # 25,000
    estimate = meter.estimate_end(104.5)  # 34.5 s = 28,750: 3,750 more, estimated
    assert [(r.active_ms, r.cost_micro_usd, r.estimated) for r in estimate] == [(34_500, 3_750, True)]


def test_delegated_responses_are_booked_once_per_id_at_their_model_and_tier() -> None:
    meter = LiveMeter(LiveIdentity("vgs_4", "ten_1", "gpt-live-1"), PRICES)
    usage = {"input_tokens": 1840, "input_tokens_details": {"cached_tokens": 1536}, "output_tokens": 212}
    response = {"id": "resp_1", "model": "gpt-5.5", "service_tier": "priority", "status": "completed", "usage": usage}
    event = {"type": "response.event", "event": {"type": "response.completed", "response": response}}
    record = meter.on_response_event(event, 1.0)
    # (304 x 1.25 + 1536 x 0.125 + 212 x 10) = 2,692 micro-USD at the standard tier; priority x2 = 5,384.
    assert record is not None and (record.cost_micro_usd, record.service_tier) == (5_384, "priority")
    assert meter.on_response_event(event, 2.0) is None  # the same response again: booked once
    flex = {**response, "id": "resp_2", "service_tier": "flex"}
    record = meter.on_response_event({"event": {"type": "response.incomplete", "response": flex}}, 3.0)
    assert record is not None and record.cost_micro_usd == 1_346  # 2,692 / 2
    created = {"event": {"type": "response.created", "response": {**response, "id": "resp_3"}}}
    assert meter.on_response_event(created, 4.0) is None  # not terminal


def test_decisions_are_booked_once_per_event() -> None:
    meter = LiveMeter(LiveIdentity("vgs_5", "ten_1", "gpt-live-1"), PRICES)
    decision = {"model": "gpt-5.5", "usage": {"input_tokens": 800, "output_tokens": 2}}
    event = {
        "type": "decision.event",
        "event_id": "ev_d1",
        "event": {"type": "decision.completed", "decision": decision},
    }
    record = meter.on_decision_event(event, 1.0)
    assert record is not None and record.cost_micro_usd == 1_020  # 800 x 1.25 + 2 x 10 = 1,020
    assert meter.on_decision_event(event, 2.0) is None


# -- limits -------------------------------------------------------------------------------------


def test_the_budget_is_reserved_a_window_ahead_and_the_start_waits_for_it() -> None:
    gov = governor(TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10_000)), reserve_ahead_s=6.0)
    actions = gov.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
    reserve = next(a for a in actions if isinstance(a, ReserveBudget))
    assert reserve.amount_micro_usd == 5_000  # 6 s x 833.33
    assert gov.on_client_event({"type": "session.update", "session": {}}, 1000.1) == []  # held behind it
    released = gov.on_reservation(reserve.reservation_id, True, 1000.2)
    assert [type(a) for a in released] == [SendToUpstream, SendToUpstream]
    # A usage report books the time, releases the window and reserves the next one.
    actions = gov.on_server_event({"type": "session.usage.updated", "usage": {"seconds": 3.0}}, 1003.0)
    assert RecordSpend("vgs_1:live_voice:3000:0", 2_500) in actions
    assert SettleBudget(reserve.reservation_id, 5_000, 0) in actions
    assert any(isinstance(a, ReserveBudget) for a in actions) and Forward() in actions


def test_a_refused_window_closes_the_session_after_session_closed() -> None:
    gov = governor(TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10_000)), reserve_ahead_s=6.0, close_wait_s=2.0)
    first = next(
        a
        for a in gov.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
        if isinstance(a, ReserveBudget)
    )
    gov.on_reservation(first.reservation_id, True, 1000.0)
    actions = gov.on_server_event({"type": "session.usage.updated", "usage": {"seconds": 3.0}}, 1003.0)
    window = next(a for a in actions if isinstance(a, ReserveBudget))
    closing = gov.on_reservation(window.reservation_id, False, 1003.1)
    assert next(a.event for a in closing if isinstance(a, SendToClient))["error"]["code"] == "budget_exhausted"
    assert any(isinstance(a, SendToUpstream) and a.event["type"] == "session.close" for a in closing)
    assert not any(isinstance(a, CloseSession) for a in closing)  # waits for the final usage
    final = gov.on_server_event({"type": "session.closed", "usage": {"seconds": 4.0}}, 1003.5)
    assert CloseSession(4003, "budget exhausted", "budget_exhausted") in final
    assert RecordSpend("vgs_1:live_voice:4000:0", 833) in final  # 4 s = 3,333.33 -> 3,333: 833 more


def test_a_close_without_session_closed_ends_on_time_and_books_an_estimate() -> None:
    gov = governor(TenantPolicy(max_session_seconds=10.0), close_wait_s=2.0)
    gov.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
    gov.on_server_event({"type": "session.usage.updated", "usage": {"seconds": 9.0}}, 1009.0)
    assert gov.next_deadline() == 1010.0
    closing = gov.on_tick(1010.0)
    assert next(a.event for a in closing if isinstance(a, SendToClient))["error"]["code"] == "session_duration_exceeded"
    assert gov.on_tick(1011.0) == []
    assert gov.on_tick(1012.0) == [CloseSession(4001, "session duration limit reached", "duration_cap")]
    estimate = booked(gov.on_end(1012.0))  # 9 s reported + 3 s since = 12 s = 10,000; 7,500 booked before
    assert [(r.active_ms, r.cost_micro_usd, r.estimated) for r in estimate] == [(12_000, 2_500, True)]


def test_idle_and_the_wall_clock_backstop() -> None:
    gov = governor(TenantPolicy(idle_timeout_seconds=5.0, budget=BudgetPolicy(daily_micro_usd=100_000)))
    reserve = next(
        a
        for a in gov.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
        if isinstance(a, ReserveBudget)
    )
    gov.on_reservation(reserve.reservation_id, True, 1000.0)
    gov.note_client_activity(1004.0)
    assert gov.on_tick(1008.0) == []
    assert next(a for a in gov.on_tick(1009.0) if isinstance(a, SendToClient)).event["error"]["code"] == "idle_timeout"
    backstop = governor(TenantPolicy(budget=BudgetPolicy(daily_micro_usd=100_000)), reserve_ahead_s=30.0)
    first = next(
        a
        for a in backstop.on_client_event({"type": "session.start", "session": {"model": "gpt-live-1"}}, 1000.0)
        if isinstance(a, ReserveBudget)
    )
    backstop.on_reservation(first.reservation_id, True, 1000.0)
    assert backstop.on_tick(1029.0) == []
    # No usage report for a whole window: another window is reserved on the wall clock.
    assert [type(a) for a in backstop.on_tick(1030.0)] == [ReserveBudget]
