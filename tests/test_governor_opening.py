"""The opening, in the pure core: `session.created` waits until voxgate's own clamp is confirmed."""

import copy
from typing import Any

from policies.actions import AuditEvent, CloseSession, Forward, Persist, SendToClient, SendToUpstream
from policies.caps import CLOSE_BAD_GATEWAY
from policies.governor import SessionGovernor, SessionIdentity
from policies.opening import OPENING_TIMEOUT_S
from policies.policy import TenantPolicy
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from tests.fixtures import realtime_server_events

SERVER = realtime_server_events()
T0 = 1_800_000_000.0
CEILING = 1000
POLICY = TenantPolicy(max_output_tokens=CEILING)


def governor(policy: TenantPolicy | None = POLICY, hold: bool = True) -> SessionGovernor:
    identity = SessionIdentity("vgs_test000000001", "ten_a", "gpt-realtime")
    return SessionGovernor(identity, DEFAULT_PRICE_TABLE, policy, T0, hold_opening=hold)


def created() -> dict[str, Any]:
    return copy.deepcopy(SERVER["session.created"])


def updated(max_output_tokens: int | str = CEILING) -> dict[str, Any]:
    event = copy.deepcopy(SERVER["session.updated"])
    event["session"]["max_output_tokens"] = max_output_tokens
    event["session"]["instructions"] = "as upstream confirmed it"
    return event


def held(gov: SessionGovernor) -> SendToUpstream:
    """Feed `session.created`: it is held, and voxgate's clamp goes upstream."""
    actions = gov.on_server_event(created(), T0 + 0.1)
    assert not any(isinstance(a, Forward | SendToClient) for a in actions)
    assert [type(a) for a in actions] == [Persist, SendToUpstream]
    [update] = [a for a in actions if isinstance(a, SendToUpstream)]
    assert update.event["type"] == "session.update" and update.event["session"]["max_output_tokens"] == CEILING
    assert gov.opening
    return update


def test_session_created_is_released_once_carrying_the_confirmed_session_and_the_answer_is_swallowed() -> None:
    gov = governor()
    assert gov.opening  # from the start: client messages wait until the opening ends
    held(gov)
    assert gov.on_server_event({"type": "conversation.created", "event_id": "e1"}, T0 + 0.2) == (Forward(),)
    confirmed = updated()
    actions = gov.on_server_event(confirmed, T0 + 0.3)
    assert not gov.opening
    assert not any(isinstance(a, Forward | SendToUpstream) for a in actions)  # the session.updated is swallowed
    [released] = [a.event for a in actions if isinstance(a, SendToClient)]
    original = created()
    assert released["type"] == "session.created" and released["event_id"] == original["event_id"]
    assert released["session"] == confirmed["session"]
    # From now on session.updated events answer the client and pass as usual.
    assert Forward() in gov.on_server_event(updated(), T0 + 0.4)


def test_an_error_answering_voxgates_update_releases_the_session_created_as_upstream_sent_it() -> None:
    gov = governor()
    update = held(gov)
    refused = {
        "type": "error",
        "event_id": "event_up1",
        "error": {"type": "invalid_request_error", "code": "invalid_value", "event_id": update.event["event_id"]},
    }
    actions = gov.on_server_event(refused, T0 + 0.3)
    assert not gov.opening
    assert [a.event for a in actions if isinstance(a, SendToClient)] == [created()]
    assert [a.kind for a in actions if isinstance(a, AuditEvent)] == ["clamp_refused"]
    assert Forward() not in actions  # the error answered voxgate, not the client


def test_an_unconfirmed_opening_closes_the_session_at_its_deadline() -> None:
    gov = governor()
    held(gov)
    deadline = T0 + OPENING_TIMEOUT_S
    assert gov.next_deadline() == deadline
    assert gov.on_tick(deadline - 0.01) == ()
    actions = gov.on_tick(deadline)
    [error] = [a.event for a in actions if isinstance(a, SendToClient)]
    assert error["type"] == "error" and error["error"]["code"] == "upstream_timeout"
    [close] = [a for a in actions if isinstance(a, CloseSession)]
    assert (close.code, close.end_reason) == (CLOSE_BAD_GATEWAY, "upstream_error")
    assert not gov.opening


def test_a_session_already_under_the_ceiling_opens_at_once() -> None:
    gov = governor()
    event = created()
    event["session"]["max_output_tokens"] = 10
    actions = gov.on_server_event(event, T0 + 0.1)
    assert Forward() in actions and not any(isinstance(a, SendToUpstream) for a in actions)
    assert not gov.opening


def test_nothing_is_held_without_a_ceiling_or_when_the_shell_cannot_hold() -> None:
    for gov in (governor(TenantPolicy()), governor(None), governor(hold=False)):
        assert not gov.opening
        assert Forward() in gov.on_server_event(created(), T0 + 0.1)
        assert not gov.opening
