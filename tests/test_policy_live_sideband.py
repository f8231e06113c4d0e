"""`policies.live.sideband.police_sideband`: a tenant's sideband events under its Live rules (pure)."""

from __future__ import annotations

from policies.live.config import LiveRefusal, LiveRules
from policies.live.sideband import SidebandRewrite, police_sideband

RULES = LiveRules(models=frozenset({"gpt-5.5"}), tools=frozenset({"lookup"}), max_output_tokens=40)


def update(responses: dict[str, object]) -> dict[str, object]:
    return {"type": "session.update", "session": {"delegation": {"type": "responses", "responses": responses}}}


def test_an_update_within_the_policy_is_forwarded_as_it_is() -> None:
    assert police_sideband(update({"max_output_tokens": 12, "service_tier": "flex"}), RULES) is None


def test_tier_effort_and_tokens_are_clamped_and_no_key_is_added() -> None:
    verdict = police_sideband(
        update({"max_output_tokens": 500, "service_tier": "priority", "reasoning": {"effort": "xhigh"}}), RULES
    )
    assert isinstance(verdict, SidebandRewrite)
    assert verdict.event["session"]["delegation"]["responses"] == {
        "max_output_tokens": 40,
        "service_tier": "default",
        "reasoning": {"effort": "high"},
    }
    # an update that does not mention max_output_tokens gets none inserted (omitted keeps the value)
    assert police_sideband(update({"text": {"verbosity": "low"}}), RULES) is None


def test_hosted_tools_and_models_outside_the_policy_are_refused() -> None:
    tool = police_sideband(update({"tools": [{"type": "web_search"}]}), RULES)
    assert isinstance(tool, LiveRefusal)
    assert (tool.code, tool.param) == ("tool_not_allowed", "session.delegation.responses.tools[0]")
    model = police_sideband(update({"model": "gpt-5.4"}), RULES)
    assert isinstance(model, LiveRefusal) and model.code == "model_not_allowed"


def test_only_the_sideband_union_passes() -> None:
    for kind in ("session.close", "response.create", "transport.dtmf.send", "session.input_audio.mute"):
        assert police_sideband({"type": kind}, RULES) is None
    for kind in ("session.start", "session.input_audio.append", "response.cancel", None):
        refused = police_sideband({"type": kind}, RULES)
        assert isinstance(refused, LiveRefusal) and (refused.code, refused.param) == ("invalid_value", "type")
    garbage = police_sideband(None, RULES)
    assert isinstance(garbage, LiveRefusal) and garbage.code == "invalid_json"
