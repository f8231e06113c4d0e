"""The governor enforces a tenant policy in session: events and `now` in, actions out."""

import copy
from collections.abc import Sequence
from typing import Annotated, Any

from openai.types.realtime import RealtimeClientEventParam, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from policies.actions import (
    Action,
    AuditEvent,
    CloseSession,
    Forward,
    ForwardRewritten,
    Persist,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SettleBudget,
)
from policies.governor import SessionGovernor, SessionIdentity
from policies.policy import BudgetPolicy, TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.fixtures import realtime_server_events

SERVER = realtime_server_events()
SERVER_EVENT = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEventParam)
T0 = 1_800_000_000.0
BUDGET = BudgetPolicy(daily_micro_usd=10_000_000, alert_at=())
POLICY = TenantPolicy(voices=frozenset({"marin"}), max_output_tokens=1000, budget=BUDGET)


def governor(policy: TenantPolicy | None = POLICY, model: str = "gpt-realtime") -> SessionGovernor:
    return SessionGovernor(SessionIdentity("vgs_test000000001", "ten_a", model), DEFAULT_PRICE_TABLE, policy, T0)


def checked(actions: Sequence[Action]) -> Sequence[Action]:
    """Every event the governor emits must parse with the official SDK's models."""
    for action in actions:
        if isinstance(action, SendToClient):
            SERVER_EVENT.validate_python(action.event)
        elif isinstance(action, SendToUpstream | ForwardRewritten):
            CLIENT_EVENT.validate_python(action.event)
    return actions


def of(kind: type, actions: Sequence[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def errors(actions: Sequence[Action]) -> list[str]:
    return [a.event["error"]["code"] for a in actions if isinstance(a, SendToClient)]


def created(response_id: str) -> dict[str, Any]:
    event = copy.deepcopy(SERVER["response.created"])
    event["response"]["id"] = response_id
    return event


def done(response_id: str, status: str = "completed", tokens: int | None = None) -> dict[str, Any]:
    event = copy.deepcopy(SERVER["response.done"])
    event["response"]["id"] = response_id
    event["response"]["status"] = status
    if tokens is not None:
        event["response"]["usage"]["input_tokens"] = tokens
    return event


def test_without_a_policy_nothing_is_enforced() -> None:
    gov = governor(policy=None)
    assert checked(gov.on_client_event({"type": "response.create", "response": {"max_output_tokens": "inf"}}, T0)) == (
        Forward(),
    )
    assert gov.on_tick(T0 + 10**6) == ()


def test_clamps_and_refusals_reach_the_client_as_ga_error_events() -> None:
    gov = governor(TenantPolicy(voices=frozenset({"marin"}), max_output_tokens=1000))
    [rewritten] = checked(
        gov.on_client_event({"type": "response.create", "response": {"max_output_tokens": "inf"}}, T0)
    )
    assert isinstance(rewritten, ForwardRewritten) and rewritten.event["response"]["max_output_tokens"] == 1000
    refused = checked(
        gov.on_client_event(
            {"type": "response.create", "event_id": "e9", "response": {"audio": {"output": {"voice": "alloy"}}}}, T0
        )
    )
    assert errors(refused) == ["voice_not_allowed"] and not of(Forward, refused)
    assert refused[0].event["error"]["event_id"] == "e9"


def test_session_created_with_inf_is_reclamped_upstream() -> None:
    gov = governor()
    actions = checked(gov.on_server_event(SERVER["session.created"], T0))
    [update] = of(SendToUpstream, actions)
    assert update.event["session"] == {"type": "realtime", "max_output_tokens": 1000}
    # Once the session carries the ceiling, a later session.update is not rewritten.
    assert gov.on_client_event({"type": "session.update", "session": {"type": "realtime"}}, T0) == (Forward(),)


def updated(max_output_tokens: int) -> dict[str, Any]:
    event = copy.deepcopy(SERVER["session.updated"])
    event["session"]["max_output_tokens"] = max_output_tokens
    return event


def test_the_answer_to_voxgates_own_mid_session_update_is_kept_from_the_client() -> None:
    # Found by a hostile review: after a policy change lowered the ceiling, the `session.updated`
    # answering voxgate's re-clamp reached the client, which never sent an update (and could take it
    # for the answer to its own).
    gov = governor()
    gov.on_server_event(SERVER["session.created"], T0)
    gov.on_server_event(updated(1000), T0)  # the opening's re-clamp answered (no opening held here)
    [update] = of(SendToUpstream, gov.on_policy_changed(TenantPolicy(max_output_tokens=200), T0 + 1))
    # The client's own update, sent after voxgate's, is answered after it (upstream answers in order).
    assert gov.on_client_event({"type": "session.update", "session": {"type": "realtime"}}, T0 + 2) == (Forward(),)
    assert of(Forward, gov.on_server_event(updated(200), T0 + 3)) == []  # voxgate's: not forwarded
    assert of(Forward, gov.on_server_event(updated(200), T0 + 4)) == [Forward()]  # the client's
    # With an update of the client's in flight, voxgate's is not taken for the next answer: that answer
    # is the client's and reaches it (voxgate's own may then reach the client too, as before).
    assert gov.on_client_event({"type": "session.update", "session": {"type": "realtime"}}, T0 + 5) == (Forward(),)
    of(SendToUpstream, gov.on_policy_changed(TenantPolicy(max_output_tokens=100), T0 + 6))
    assert of(Forward, gov.on_server_event(updated(200), T0 + 7)) == [Forward()]
    gov.on_server_event(updated(100), T0 + 8)
    gov.on_server_event(updated(100), T0 + 8)
    # Voxgate's own update refused upstream: the client, which never sent it, does not see the error.
    [refused] = of(SendToUpstream, gov.on_policy_changed(TenantPolicy(max_output_tokens=50), T0 + 9))
    error = {
        "type": "error",
        "event_id": "evt_up",
        "error": {
            "type": "invalid_request_error",
            "code": "x",
            "message": "no",
            "param": None,
            "event_id": refused.event["event_id"],
        },
    }
    actions = gov.on_server_event(error, T0 + 10)
    assert of(Forward, actions) == [] and of(AuditEvent, actions)[0].kind == "clamp_refused"
    assert update.event["event_id"] != refused.event["event_id"]


def test_reservation_granted_forwards_the_held_create_and_what_queued_behind_it() -> None:
    gov = governor()
    [reserve] = gov.on_client_event({"type": "response.create"}, T0)
    assert isinstance(reserve, ReserveBudget) and not reserve.forced
    # 1000 output tokens at $64/1M, no context yet.
    assert reserve.amount_micro_usd == 64_000
    assert gov.on_client_event({"type": "conversation.item.delete", "item_id": "item_1"}, T0) == ()
    actions = checked(gov.on_reservation(reserve.reservation_id, True, T0 + 0.01))
    sent = [a.event["type"] for a in of(SendToUpstream, actions)]
    assert sent == ["response.create", "conversation.item.delete"]
    assert of(SendToUpstream, actions)[0].event["response"]["max_output_tokens"] == 1000
    assert checked(gov.on_server_event(created("resp_1"), T0 + 0.1)) == (Forward(),)
    finished = gov.on_server_event(done("resp_1"), T0 + 2)
    [settle] = of(SettleBudget, finished)
    [record] = [a.record for a in finished if isinstance(a, Persist)]
    # The fixture's response at gpt-realtime rates, by hand in tests/test_governor_metering.py: 6_966.
    assert record.cost_micro_usd == 6_966
    assert settle == SettleBudget(reserve.reservation_id, 64_000, 6_966)
    assert of(SettleBudget, gov.on_server_event(done("resp_1"), T0 + 3)) == []  # settled exactly once


def test_reservation_refused_answers_budget_exhausted_and_forwards_nothing() -> None:
    gov = governor()
    [reserve] = gov.on_client_event({"type": "response.create", "event_id": "evt_7"}, T0)
    actions = checked(gov.on_reservation(reserve.reservation_id, False, T0))
    assert not of(SendToUpstream, actions)
    # The refusal answers the client's event; then the session is cut (nothing in flight: at once).
    assert errors(actions)[0] == "budget_exhausted"
    assert actions[0].event["error"]["event_id"] == "evt_7"
    assert actions[0].event["error"]["type"] == "insufficient_quota"
    [close] = of(CloseSession, actions)
    assert (close.code, close.end_reason) == (4003, "budget_exhausted")


def test_upstream_refusing_a_reserved_create_releases_the_reservation() -> None:
    gov = governor()
    [reserve] = gov.on_client_event({"type": "response.create", "event_id": "evt_8"}, T0)
    gov.on_reservation(reserve.reservation_id, True, T0)
    error = copy.deepcopy(SERVER["error"])
    error["error"].update(code="conversation_already_has_active_response", event_id="evt_8")
    assert of(SettleBudget, gov.on_server_event(error, T0)) == [SettleBudget(reserve.reservation_id, 64_000, 0)]


def test_unanswered_reservation_is_refused_after_the_timeout() -> None:
    gov = governor()
    [reserve] = gov.on_client_event({"type": "response.create"}, T0)
    assert gov.on_tick(T0 + 1) == ()
    assert errors(checked(gov.on_tick(T0 + 5))) == ["budget_exhausted"]
    assert gov.on_reservation(reserve.reservation_id, True, T0 + 6) == ()


def test_vad_response_is_reserved_after_the_fact_and_settled() -> None:
    gov = governor()
    actions = gov.on_server_event(created("resp_vad"), T0)
    [reserve] = of(ReserveBudget, actions)
    assert reserve.forced and isinstance(actions[0], Forward)
    assert gov.on_reservation(reserve.reservation_id, True, T0) == ()
    [settle] = of(SettleBudget, gov.on_server_event(done("resp_vad"), T0 + 1))
    assert settle.reservation_id == reserve.reservation_id


def test_refused_vad_reservation_cuts_the_session_finishing_the_response() -> None:
    gov = governor()
    [reserve] = of(ReserveBudget, gov.on_server_event(created("resp_vad"), T0))
    cut = gov.on_reservation(reserve.reservation_id, False, T0)
    assert [a.kind for a in of(AuditEvent, cut)] == ["budget_cut"] and not of(CloseSession, cut)
    assert errors(checked(gov.on_client_event({"type": "response.create"}, T0))) == ["budget_exhausted"]
    end = checked(gov.on_server_event(done("resp_vad"), T0 + 0.5))
    assert errors(end) == ["budget_exhausted"]
    assert of(CloseSession, end) == [CloseSession(4003, "budget exhausted", "budget_exhausted")]


def test_budget_broadcast_with_cancel_response_cancels_and_closes_within_a_second() -> None:
    policy = TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10**7, at_limit="cancel_response"))
    gov = governor(policy)
    [reserve] = of(ReserveBudget, gov.on_server_event(created("resp_1"), T0))
    actions = checked(gov.on_budget_exhausted(T0 + 1))
    [cancel] = of(SendToUpstream, actions)
    assert cancel.event["type"] == "response.cancel" and cancel.event["response_id"] == "resp_1"
    assert gov.on_tick(T0 + 1.5) == ()
    [close] = of(CloseSession, checked(gov.on_tick(T0 + 2)))
    assert close.code == 4003 and gov.closed == close
    # Its reservation stays open past the close: the late response.done (the shell reads on for it)
    # settles it at the real cost (the fixture's 6_966, by hand in test_governor_metering.py), once.
    assert gov.responses_in_flight
    settles = of(SettleBudget, gov.on_server_event(done("resp_1", "cancelled"), T0 + 3))
    assert settles == [SettleBudget(reserve.reservation_id, reserve.amount_micro_usd, 6_966)]
    assert not gov.responses_in_flight and gov.on_session_end(T0 + 4) == ()


def test_budget_broadcast_with_nothing_in_flight_closes_at_once() -> None:
    actions = checked(governor().on_budget_exhausted(T0))
    assert errors(actions) == ["budget_exhausted"] and of(CloseSession, actions)[0].end_reason == "budget_exhausted"


def test_duration_cap_lets_the_response_finish_within_the_grace() -> None:
    gov = governor(TenantPolicy(max_session_seconds=60))
    gov.on_server_event(created("resp_1"), T0 + 50)
    assert gov.on_tick(T0 + 59) == ()
    assert of(CloseSession, gov.on_tick(T0 + 60)) == []
    assert errors(checked(gov.on_client_event({"type": "response.create"}, T0 + 61))) == ["session_duration_exceeded"]
    [close] = of(CloseSession, checked(gov.on_tick(T0 + 65)))
    assert close == CloseSession(4001, "session duration limit reached", "duration_cap")


def test_duration_cap_closes_when_the_response_ends_inside_the_grace() -> None:
    gov = governor(TenantPolicy(max_session_seconds=60))
    gov.on_server_event(created("resp_1"), T0 + 50)
    gov.on_tick(T0 + 60)
    end = checked(gov.on_server_event(done("resp_1"), T0 + 62))
    assert errors(end) == ["session_duration_exceeded"] and of(CloseSession, end)[0].code == 4001


def test_idle_timeout_counts_client_activity_and_responses() -> None:
    gov = governor(TenantPolicy(idle_timeout_seconds=30))
    gov.note_client_activity(T0 + 20)  # an audio append the shell did not decode
    assert gov.on_tick(T0 + 49) == ()
    gov.on_server_event(created("resp_1"), T0 + 49)
    assert gov.on_tick(T0 + 100) == ()  # never idle while a response is in flight
    gov.on_server_event(done("resp_1"), T0 + 100)
    assert gov.on_tick(T0 + 129) == ()
    actions = checked(gov.on_tick(T0 + 130))
    assert errors(actions) == ["idle_timeout"] and of(CloseSession, actions)[0].code == 4002


def test_session_token_ceiling_closes_after_the_response_that_crossed_it() -> None:
    gov = governor(TenantPolicy(max_session_tokens=500))
    gov.on_server_event(created("resp_1"), T0)
    assert of(CloseSession, gov.on_server_event(done("resp_1"), T0)) == []  # 253 tokens
    gov.on_server_event(created("resp_2"), T0 + 1)
    actions = checked(gov.on_server_event(done("resp_2"), T0 + 2))
    assert errors(actions) == ["session_token_limit"]
    assert of(CloseSession, actions) == [CloseSession(4004, "session token limit reached", "session_token_cap")]


def test_lower_ceiling_mid_session_reclamps_the_live_session() -> None:
    gov = governor()
    gov.on_server_event(SERVER["session.created"], T0)
    actions = checked(gov.on_policy_changed(TenantPolicy(max_output_tokens=200), T0 + 1))
    [update] = of(SendToUpstream, actions)
    assert update.event["session"]["max_output_tokens"] == 200
    assert of(AuditEvent, actions)[0].kind == "reclamp"
    assert gov.on_policy_changed(TenantPolicy(max_output_tokens=500), T0 + 2) == ()
    # New ceilings apply to the next events.
    assert gov.on_client_event({"type": "response.create", "response": {"max_output_tokens": 400}}, T0 + 3) == (
        Forward(),
    )
    [rewritten] = gov.on_client_event({"type": "response.create", "response": {"max_output_tokens": 900}}, T0 + 3)
    assert isinstance(rewritten, ForwardRewritten) and rewritten.event["response"]["max_output_tokens"] == 500


def test_while_closing_a_response_upstream_starts_on_its_own_is_cancelled_at_once() -> None:
    # docs/governor.md, "Closes": while closing, any response upstream starts on its own is cancelled at once.
    gov = governor(TenantPolicy(max_session_seconds=60))
    gov.on_server_event(created("resp_1"), T0 + 50)
    assert of(CloseSession, gov.on_tick(T0 + 60)) == []  # closing: resp_1 may finish within the grace
    actions = checked(gov.on_server_event(created("resp_vad"), T0 + 61))
    assert isinstance(actions[0], Forward)
    [cancel] = of(SendToUpstream, actions)
    assert (cancel.event["type"], cancel.event["response_id"]) == ("response.cancel", "resp_vad")


def test_next_deadline_names_when_a_tick_has_something_to_do() -> None:
    assert governor(None).next_deadline() is None  # no policy: nothing is timed
    gov = governor(TenantPolicy(max_session_seconds=60, idle_timeout_seconds=30))
    gov.note_client_activity(T0 + 20)
    assert gov.next_deadline() == T0 + 50  # idle at 20 + 30, before the duration cap at 60
    gov.on_server_event(created("resp_1"), T0 + 45)
    assert gov.next_deadline() == T0 + 60  # never idle while a response is in flight: the cap is next
    cut = TenantPolicy(budget=BudgetPolicy(daily_micro_usd=10**7, at_limit="cancel_response"))
    gov = governor(cut)
    gov.on_server_event(created("resp_1"), T0)
    gov.on_budget_exhausted(T0 + 1)
    # cancel_response: the close is due 0.9 s after the cut, so a shell that ticks at the
    # deadline closes within the 1 s docs/close-codes.md promises.
    assert gov.next_deadline() == T0 + 1.9
    assert of(CloseSession, gov.on_tick(T0 + 1.9))
    assert gov.next_deadline() is None


# -- The end of a session on the client's side or voxgate's: the fence ---------------------------


def cleared() -> dict[str, Any]:
    return copy.deepcopy(SERVER["input_audio_buffer.cleared"])


def fence_of(actions: Sequence[Action]) -> str:
    [fence] = [a.event for a in of(SendToUpstream, actions) if a.event["type"] == "input_audio_buffer.clear"]
    return str(fence["event_id"])


def test_client_gone_fences_upstream_and_a_response_vad_starts_meanwhile_is_cancelled_and_billed() -> None:
    gov = governor()
    gone = checked(gov.on_client_gone(T0))
    fence_of(gone)
    assert [a.event["type"] for a in of(SendToUpstream, gone)] == ["input_audio_buffer.clear"]  # nothing to cancel
    assert gov.awaiting_upstream and not gov.responses_in_flight
    # Upstream's VAD had the client's turn: the response it starts is cancelled at once...
    started = checked(gov.on_server_event(created("resp_vad"), T0 + 0.1))
    [reserve] = of(ReserveBudget, started)
    assert [(a.event["type"], a.event["response_id"]) for a in of(SendToUpstream, started)] == [
        ("response.cancel", "resp_vad")
    ]
    assert checked(gov.on_server_event(cleared(), T0 + 0.2)) == (Forward(),)
    assert gov.awaiting_upstream  # the fence is answered, the response is not done
    # ...and its response.done is billed and settled like any other (6_966: by hand, test_governor_metering.py).
    finished = gov.on_server_event(done("resp_vad", "cancelled"), T0 + 0.3)
    [record] = [a.record for a in finished if isinstance(a, Persist)]
    assert (record.response_id, record.cost_micro_usd) == ("resp_vad", 6_966)
    assert of(SettleBudget, finished) == [SettleBudget(reserve.reservation_id, reserve.amount_micro_usd, 6_966)]
    assert not gov.awaiting_upstream
    assert gov.on_client_gone(T0 + 1) == ()  # once


def test_after_a_budget_close_a_reserved_response_is_settled_once_at_its_real_cost() -> None:
    gov = governor()
    [reserve] = gov.on_client_event({"type": "response.create"}, T0)
    gov.on_reservation(reserve.reservation_id, True, T0)  # response.create sent, not yet announced
    cut = checked(gov.on_budget_exhausted(T0 + 0.1))
    assert of(CloseSession, cut) and not of(SettleBudget, cut)  # the reservation stays open
    assert gov.responses_in_flight
    fence_of(checked(gov.on_client_gone(T0 + 0.1)))
    announced = checked(gov.on_server_event(created("resp_1"), T0 + 0.2))
    assert not of(ReserveBudget, announced)  # it is the reserved one
    assert [a.event["type"] for a in of(SendToUpstream, announced)] == ["response.cancel"]
    settles = of(SettleBudget, gov.on_server_event(done("resp_1", "cancelled"), T0 + 0.3))
    assert settles == [SettleBudget(reserve.reservation_id, 64_000, 6_966)]
    assert of(SettleBudget, gov.on_server_event(done("resp_1", "cancelled"), T0 + 0.4)) == []
    assert gov.on_server_event(cleared(), T0 + 0.5) == (Forward(),)
    assert not gov.awaiting_upstream and gov.on_session_end(T0 + 1) == ()


def test_a_response_never_done_is_settled_at_its_worst_case_when_the_session_ends() -> None:
    gov = governor()
    [reserve] = of(ReserveBudget, gov.on_server_event(created("resp_1"), T0))
    gov.on_client_gone(T0 + 1)
    assert gov.on_session_end(T0 + 6) == (
        SettleBudget(reserve.reservation_id, reserve.amount_micro_usd, reserve.amount_micro_usd),
    )
    assert gov.on_session_end(T0 + 7) == ()
    # A response.done read after that is still booked, but settles nothing twice.
    late = gov.on_server_event(done("resp_1", "cancelled"), T0 + 8)
    assert [a.record.response_id for a in late if isinstance(a, Persist)] == ["resp_1"]
    assert of(SettleBudget, late) == []


def test_the_fence_is_answered_by_the_last_clear_or_by_an_error_naming_it() -> None:
    gov = governor(policy=None)
    assert gov.on_client_event({"type": "input_audio_buffer.clear"}, T0) == (Forward(),)
    fence_of(gov.on_client_gone(T0))
    gov.on_server_event(cleared(), T0 + 0.1)  # answers the client's own clear, sent before the fence
    assert gov.awaiting_upstream
    gov.on_server_event(cleared(), T0 + 0.2)
    assert not gov.awaiting_upstream
    refused = governor(policy=None)
    fence = fence_of(refused.on_client_gone(T0))
    error = copy.deepcopy(SERVER["error"])
    error["error"].update(code="invalid_request_error", event_id="event_other")
    refused.on_server_event(error, T0 + 0.1)
    assert refused.awaiting_upstream
    error["error"]["event_id"] = fence
    refused.on_server_event(error, T0 + 0.2)
    assert not refused.awaiting_upstream


def test_a_transcription_committed_before_the_end_is_waited_for_until_it_completes_or_fails() -> None:
    gov = governor(policy=None)
    session = copy.deepcopy(SERVER["session.updated"])
    session["session"]["audio"]["input"]["transcription"] = {"model": "gpt-4o-transcribe"}
    gov.on_server_event(session, T0)
    for item_id in ("item_a", "item_b"):
        gov.on_server_event({**copy.deepcopy(SERVER["input_audio_buffer.committed"]), "item_id": item_id}, T0)
    gov.on_client_gone(T0 + 0.1)
    gov.on_server_event(cleared(), T0 + 0.2)
    assert gov.awaiting_upstream and gov.usage_pending  # the fence is answered; two transcriptions are owed
    completed = copy.deepcopy(SERVER["conversation.item.input_audio_transcription.completed"])
    completed["item_id"] = "item_a"
    assert [type(a) for a in gov.on_server_event(completed, T0 + 0.3)] == [Forward, Persist]
    assert gov.awaiting_upstream
    [audit] = gov.on_responses_unbilled(T0 + 0.4, "test")
    assert audit.detail["transcription_item_ids"] == ["item_b"]
    gov.on_server_event(
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "item_id": "item_b",
            "content_index": 0,
            "error": {"type": "transcription_error"},
        },
        T0 + 0.5,
    )
    assert not gov.awaiting_upstream


def test_a_client_clear_upstream_refuses_still_counts_as_answered_for_the_fence() -> None:
    # The client cleared the buffer (upstream refused that clear with an error naming its
    # event_id), then left. The fence's `cleared` is then the last answer owed: once it comes,
    # nothing more is awaited (an earlier version waited the whole abandon timeout).
    gov = governor(TenantPolicy())
    gov.on_client_event({"type": "input_audio_buffer.clear", "event_id": "evt_client_clear"}, T0)
    [fence] = [
        a.event for a in of(SendToUpstream, gov.on_client_gone(T0 + 1)) if a.event["type"] == "input_audio_buffer.clear"
    ]
    gov.on_server_event(
        {
            "type": "error",
            "event_id": "event_1",
            "error": {
                "type": "invalid_request_error",
                "code": "x",
                "message": "no",
                "param": None,
                "event_id": "evt_client_clear",
            },
        },
        T0 + 1.1,
    )
    assert gov.awaiting_upstream
    gov.on_server_event({"type": "input_audio_buffer.cleared", "event_id": "event_2"}, T0 + 1.2)
    assert fence["event_id"] and not gov.awaiting_upstream
