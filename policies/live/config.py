"""Policing a Live session's configuration: `session.start`, `session.update` and fork overrides.

The Live server rejects unknown keys, so a clamp only ever replaces the value of a key the
client sent, or inserts `delegation.responses.max_output_tokens` (a key the server takes)
when a tenant has an output ceiling. What the policy refuses (a model, voice or tool) comes
back as a `LiveRefusal` the shell turns into an OpenAI-shaped `error`; nothing is forwarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from policies.policy import TenantPolicy
from policies.prices.rates import STANDARD
from policies.prices.table import DEFAULT_TIER, PriceTable

# The order `reasoning.effort` clamps along.
EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh")
# Service tiers billed at most at the standard rate; any other is clamped to "default". With a
# price table, the tiers no Responses model of it prices dearer (`standard_priced_tiers`).
STANDARD_TIERS: Final = frozenset({"auto", "default", "flex"})
AUTO_TIER: Final = "auto"
DEFAULT_VOICE: Final = "marin"
# Responses tools identified by a name the tenant lists; every other type is hosted, by its type.
_NAMED_TOOLS: Final = {"function": "name", "custom": "name", "namespace": "name", "mcp": "server_label"}


@dataclass(frozen=True, slots=True)
class LiveRules:
    """What a tenant's policy allows a Live session; `from_policy` reads it from `TenantPolicy`.

    `models` covers the Live model and the delegated Responses and Decisions models (None:
    any); `tools` lists function names, MCP server labels and hosted tool types.
    """

    models: frozenset[str] | None = None
    voices: frozenset[str] | None = None
    tools: frozenset[str] = field(default_factory=frozenset)
    max_output_tokens: int | None = None
    service_tiers: frozenset[str] = STANDARD_TIERS
    max_reasoning_effort: str = "high"

    @classmethod
    def from_policy(cls, policy: TenantPolicy, prices: PriceTable | None = None) -> LiveRules:
        """The policy's rules; with `prices`, the tiers that pass are those the table bills at most
        at the standard rates (a price file that makes `flex` dearer clamps it too)."""
        tiers = STANDARD_TIERS if prices is None else standard_priced_tiers(prices)
        return cls(policy.models, policy.voices, policy.tools, policy.max_output_tokens, tiers)


def standard_priced_tiers(prices: PriceTable) -> frozenset[str]:
    """The tiers `prices` bills at most at the standard rates for every Responses model: a tier
    passes only if no model prices it dearer (its own rates or multiple, else the table-wide
    multiple, which also prices models the table does not name) and every model prices it (an
    unpriced tier is billed at the table's ceiling).
    `auto` that the table prices nowhere passes: upstream then serves it at the project's
    default tier, whose rates are the standard ones."""
    own = [prices.tier_prices_of(model) for model in prices.responses]
    names = {*prices.service_tiers, *(tier for tiers in own for tier in tiers), AUTO_TIER}
    passed = {DEFAULT_TIER}
    for tier in names - {DEFAULT_TIER}:
        if tier == AUTO_TIER and not prices.prices_tier(tier) and not any(tier in tiers for tiers in own):
            passed.add(tier)
            continue
        table_wide = prices.service_tiers.get(tier)  # what a model the table does not name pays
        if (table_wide is None or table_wide <= STANDARD) and all(
            _at_most_standard(prices, model, tier) for model in prices.responses
        ):
            passed.add(tier)
    return frozenset(passed)


def _at_most_standard(prices: PriceTable, model: str, tier: str) -> bool:
    standard, _ = prices.responses_price_for(model)
    priced = prices.responses_tier_price_for(model, tier)
    rates = priced.rates
    return (
        not priced.flagged
        and priced.multiplier <= STANDARD
        and rates.text_in <= standard.text_in
        and rates.cached_text_in <= standard.cached_text_in
        and rates.text_out <= standard.text_out
    )


@dataclass(frozen=True, slots=True)
class LiveRefusal:
    """Why a configuration is refused: an OpenAI error `code`, its `message` and `param` path."""

    code: str
    message: str
    param: str
    type: str = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class Policed:
    """The configuration to forward, and the paths voxgate changed (empty: forward the original)."""

    session: dict[str, Any]
    clamped: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        value = self.session.get("model")
        return value if isinstance(value, str) else ""


def police_start(session: object, rules: LiveRules, prices: PriceTable) -> Policed | LiveRefusal:
    """A `session.start`'s `session`: model (required, allowed and priced), voice, delegation."""
    if not isinstance(session, Mapping):
        return LiveRefusal("invalid_value", "'session' must be an object.", "session")
    model = session.get("model")
    if not isinstance(model, str) or not model:
        return LiveRefusal("missing_required_parameter", "'session.model' is required.", "session.model")
    refused = _model_refusal(model, rules, "session.model")
    if refused is not None:
        return refused
    if not prices.admits(model, "durations"):
        return LiveRefusal(
            "model_not_priced",
            f"Model '{model}' has no price in this gateway's price table, so its usage cannot be metered.",
            "session.model",
        )
    refused = _voice_refusal(session, rules)
    if refused is not None:
        return refused
    return _police_delegation(dict(session), rules, at_start=True)


def police_update(session: object, rules: LiveRules) -> Policed | LiveRefusal:
    """A `session.update`'s `session` (only `delegation` and `triggers` are mutable)."""
    if not isinstance(session, Mapping):
        return LiveRefusal("invalid_value", "'session' must be an object.", "session")
    return _police_delegation(dict(session), rules, at_start=False)


def police_overrides(session: object, rules: LiveRules) -> Policed | LiveRefusal:
    """A fork's overrides (`{}` inherits; the model is inherited and never sent)."""
    return police_update(session, rules)


def _model_refusal(model: str, rules: LiveRules, param: str) -> LiveRefusal | None:
    if rules.models is None or model in rules.models:
        return None
    return LiveRefusal(
        "model_not_allowed",
        f"Model '{model}' is not allowed by this tenant's policy (see the policy's 'models' list).",
        param,
    )


def _voice_refusal(session: Mapping[str, Any], rules: LiveRules) -> LiveRefusal | None:
    if rules.voices is None:
        return None
    audio = session.get("audio")
    output = audio.get("output") if isinstance(audio, Mapping) else None
    voice = output.get("voice", DEFAULT_VOICE) if isinstance(output, Mapping) else DEFAULT_VOICE
    name = voice.get("id") if isinstance(voice, Mapping) else voice
    if isinstance(name, str) and name in rules.voices:
        return None
    return LiveRefusal(
        "voice_not_allowed",
        f"Voice {name!r} is not allowed by this tenant's policy (see the policy's 'voices' list).",
        "session.audio.output.voice",
    )


def _police_delegation(session: dict[str, Any], rules: LiveRules, *, at_start: bool) -> Policed | LiveRefusal:
    delegation = session.get("delegation")
    if not isinstance(delegation, Mapping):
        return Policed(session)
    kind = delegation.get("type")
    if kind == "decisions":
        decisions = delegation.get("decisions")
        model = decisions.get("model") if isinstance(decisions, Mapping) else None
        refused = (
            None if not isinstance(model, str) else _model_refusal(model, rules, "session.delegation.decisions.model")
        )
        return refused or Policed(session)
    responses = delegation.get("responses")
    if kind != "responses" or not isinstance(responses, Mapping):
        return Policed(session)
    policed = _police_responses(dict(responses), rules, at_start=at_start)
    if isinstance(policed, LiveRefusal):
        return policed
    responses_out, clamped = policed
    if clamped:
        session["delegation"] = {**delegation, "responses": responses_out}
    return Policed(session, clamped)


def _police_responses(
    responses: dict[str, Any], rules: LiveRules, *, at_start: bool
) -> tuple[dict[str, Any], tuple[str, ...]] | LiveRefusal:
    base = "session.delegation.responses"
    clamped: list[str] = []
    model = responses.get("model")
    if isinstance(model, str):
        refused = _model_refusal(model, rules, f"{base}.model")
        if refused is not None:
            return refused
    refused = _tools_refusal(responses.get("tools"), rules, f"{base}.tools")
    if refused is not None:
        return refused
    ceiling = rules.max_output_tokens
    if ceiling is not None and ("max_output_tokens" in responses or at_start):
        value = responses.get("max_output_tokens")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return LiveRefusal(
                "invalid_value", "'max_output_tokens' must be a positive integer.", f"{base}.max_output_tokens"
            )
        if value is None or value > ceiling:
            responses["max_output_tokens"] = ceiling
            clamped.append(f"{base}.max_output_tokens")
    tier = responses.get("service_tier")
    if tier is not None and tier not in rules.service_tiers:
        responses["service_tier"] = "default"
        clamped.append(f"{base}.service_tier")
    reasoning = responses.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    if effort in EFFORTS and EFFORTS.index(effort) > EFFORTS.index(rules.max_reasoning_effort):
        assert isinstance(reasoning, Mapping)
        responses["reasoning"] = {**reasoning, "effort": rules.max_reasoning_effort}
        clamped.append(f"{base}.reasoning.effort")
    return responses, tuple(clamped)


def _tools_refusal(tools: object, rules: LiveRules, param: str) -> LiveRefusal | None:
    if not isinstance(tools, list):
        return None
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            continue
        kind = tool.get("type")
        name = tool.get(_NAMED_TOOLS[kind]) if kind in _NAMED_TOOLS else kind
        if not isinstance(name, str) or name not in rules.tools:
            return LiveRefusal(
                "tool_not_allowed",
                f"Tool {name!r} is not allowed by this tenant's policy (see the policy's 'tools' list).",
                f"{param}[{index}]",
            )
    return None
