"""What a tenant's session config may hold when it is fixed before any socket: pure decisions.

Minted client secrets and brokered WebRTC calls carry their whole session config in one
HTTP request, so it is policed before upstream sees it: the model is filled in (upstream
runs exactly what admission checked), `max_output_tokens` is clamped, and the allowlists
refuse with the same errors `policies.clamp` gives a `session.update`. Nothing here reads a
clock: a time is an explicit `now`.

`default_model` is the one rule for "which model when none is named": the HTTP routes fill
it into a session, and `Enforcement.admit` checks a transcription session's budget with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.actions import ErrorDetail
from policies.clamp import Refused, Rewritten, police_client_event
from policies.policy import TenantPolicy
from policies.prices.table import PriceTable

UPSTREAM_DEFAULT_MODEL: Final = "gpt-realtime"  # what upstream runs when a request names no model
UPSTREAM_SECRET_SECONDS: Final = 600  # upstream's default client-secret lifetime
SESSION_TYPES: Final = ("realtime", "transcription")


@dataclass(frozen=True, slots=True)
class PolicedSession:
    """A session config the policy allows, and the realtime model to admit (None: transcription)."""

    session: dict[str, Any]
    model: str | None


@dataclass(frozen=True, slots=True)
class SessionRefused:
    """Refuse the request: 400 for a malformed config, 403 for what a policy list does not allow."""

    status: int
    detail: ErrorDetail


def default_model(policy: TenantPolicy, prices: PriceTable) -> str:
    """Upstream's default when the tenant may use it (or has no allowlist), else the first model of
    its allowlist that `prices` knows as a Realtime model. An allowlist also names GPT-Live,
    translation and transcription models, which a Realtime session cannot run on; only when it
    names no Realtime model at all is its first model the answer (admission then refuses it)."""
    if policy.allows_model(UPSTREAM_DEFAULT_MODEL) or not policy.models:
        return UPSTREAM_DEFAULT_MODEL
    realtime = sorted(model for model in policy.models if prices.is_known(model))
    return realtime[0] if realtime else min(policy.models)


def police_session(
    session: Mapping[str, Any], policy: TenantPolicy, prices: PriceTable
) -> PolicedSession | SessionRefused:
    """The session config `policy` allows (clamped, type and model filled in), or why not.

    Allowlist refusals are 403 naming the policy list (`model_not_allowed`,
    `voice_not_allowed`, `tool_not_allowed`); a malformed type, model or
    `max_output_tokens` is a 400 `invalid_value`.
    """
    policed = dict(session)
    kind = policed.get("type", "realtime")
    if kind not in SESSION_TYPES:
        return _invalid("'session.type' must be 'realtime' or 'transcription'.", "session.type")
    policed["type"] = kind
    model: str | None = None
    if kind == "realtime":
        if "model" not in policed:
            policed["model"] = default_model(policy, prices)
        named = policed["model"]
        if not isinstance(named, str) or not named:
            return _invalid("'session.model' must be a non-empty string.", "session.model")
        model = named
    verdict = police_client_event({"type": "session.update", "session": policed}, policy, session_has_ceiling=False)
    if isinstance(verdict, Refused):
        return SessionRefused(400 if verdict.detail.code == "invalid_value" else 403, verdict.detail)
    if isinstance(verdict, Rewritten):
        policed = dict(verdict.event["session"])
    return PolicedSession(policed, model)


def policy_session(policy: TenantPolicy, prices: PriceTable) -> PolicedSession | SessionRefused | None:
    """The session a raw SDP offer runs with, or None when the policy adds nothing to upstream's.

    A model allowlist or an output ceiling must be in force from the first response, so
    either turns the raw offer into one with this session; the model is `default_model`.
    """
    if policy.max_output_tokens is None and policy.models is None:
        return None
    return police_session({"type": "realtime"}, policy, prices)


def police_expires_after(requested: object, policy: TenantPolicy) -> dict[str, Any] | SessionRefused | None:
    """A client secret's `expires_after` capped at the policy's longest lifetime; None keeps the request's.

    Without one (absent or null), upstream's default of `UPSTREAM_SECRET_SECONDS` applies, so
    one is inserted only when the policy's cap is shorter.
    """
    ceiling = policy.expires_after_max_seconds
    if requested is None:
        if ceiling < UPSTREAM_SECRET_SECONDS:
            return {"anchor": "created_at", "seconds": ceiling}
        return None
    if not isinstance(requested, Mapping):
        return _invalid("'expires_after' must be an object.", "expires_after")
    seconds = requested.get("seconds", UPSTREAM_SECRET_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        return _invalid("'expires_after.seconds' must be an integer.", "expires_after.seconds")
    anchor = requested.get("anchor", "created_at")
    return {**requested, "anchor": anchor, "seconds": min(seconds, ceiling)}


def secret_expires_at(minted: Mapping[str, Any], request: Mapping[str, Any], now: float) -> float:
    """When a minted secret stops being usable: upstream's `expires_at`, else what was asked for
    (upstream's default lifetime when nothing was) counted from `now`."""
    expires_at = minted.get("expires_at")
    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        return float(expires_at)
    asked = request.get("expires_after")
    seconds = asked.get("seconds") if isinstance(asked, Mapping) else None
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return now + seconds
    return now + UPSTREAM_SECRET_SECONDS


def _invalid(message: str, param: str) -> SessionRefused:
    return SessionRefused(400, ErrorDetail(message=message, code="invalid_value", param=param))
