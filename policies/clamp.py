"""Clamping and allowlists over client events: pure functions, event in, verdict out.

`police_client_event` looks at a decoded `session.update` or `response.create` and
returns `Unchanged`, `Rewritten(event)` (a copy with `max_output_tokens` clamped) or
`Refused(detail)` (an OpenAI-shaped error naming the policy list that refused it). Both
the GA names and the beta names are checked at the same level, because the SDK models
accept beta names silently as extras (`max_response_output_tokens`, `voice`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.actions import ErrorDetail
from policies.policy import TenantPolicy

GA_TOKENS: Final = "max_output_tokens"
BETA_TOKENS: Final = "max_response_output_tokens"
# Keys only a beta-shaped response.create carries; a GA one never does.
_BETA_RESPONSE_KEYS: Final = frozenset({"modalities", "voice", "output_audio_format", "temperature", BETA_TOKENS})
_GA_RESPONSE_KEYS: Final = frozenset({"output_modalities", "audio", GA_TOKENS})


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Forward the event as it came."""


@dataclass(frozen=True, slots=True)
class Rewritten:
    """Forward `event` instead; `paths` are the fields that were clamped or inserted."""

    event: dict[str, Any]
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """Do not forward; answer the client with an `error` event built from `detail`."""

    detail: ErrorDetail


ClampResult = Unchanged | Rewritten | Refused
UNCHANGED: Final = Unchanged()


def clamp_token_value(value: object, ceiling: int) -> int | None:
    """The clamped value of a `max_output_tokens` field, or None if it is garbage.

    `"inf"`, `null` and anything above `ceiling` become `ceiling`; an integral number in
    [1, ceiling] is kept. Strings other than `"inf"`, booleans, fractions and numbers
    below 1 are garbage (the caller refuses the event).
    """
    if value is None or value == "inf":
        return ceiling
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    number = int(value)
    return None if number < 1 else min(number, ceiling)


def police_client_event(
    event: Mapping[str, Any], policy: TenantPolicy, *, session_has_ceiling: bool = True
) -> ClampResult:
    """Clamp and allowlist one client event against `policy`.

    `session_has_ceiling` is False until the upstream session is known to carry the
    policy's ceiling; while False, a `session.update` without any token field gets one
    inserted (later ones are left alone so a lower value the client chose is kept).
    """
    kind = event.get("type")
    if kind == "session.update":
        return _police(event, "session", policy, insert_missing=not session_has_ceiling)
    if kind == "response.create":
        return _police(event, "response", policy, insert_missing=True)
    return UNCHANGED


def _police(event: Mapping[str, Any], level: str, policy: TenantPolicy, *, insert_missing: bool) -> ClampResult:
    body = event.get(level)
    if body is None and level == "response":
        body = {}
    if not isinstance(body, Mapping):
        return UNCHANGED  # not ours to judge; upstream answers with its own error
    event_id = event.get("event_id")
    client_event_id = event_id if isinstance(event_id, str) else None
    refusal = _allowlists(body, level, policy, client_event_id)
    if refusal is not None:
        return refusal
    if policy.max_output_tokens is None:
        return UNCHANGED
    if level == "session" and body.get("type") == "transcription":
        return UNCHANGED  # transcription sessions produce no responses
    return _clamp_tokens(event, body, level, policy.max_output_tokens, insert_missing, client_event_id)


def _clamp_tokens(
    event: Mapping[str, Any],
    body: Mapping[str, Any],
    level: str,
    ceiling: int,
    insert_missing: bool,
    client_event_id: str | None,
) -> ClampResult:
    changes: dict[str, int] = {}
    for name in (GA_TOKENS, BETA_TOKENS):
        if name not in body:
            continue
        clamped = clamp_token_value(body[name], ceiling)
        if clamped is None:
            return Refused(
                ErrorDetail(
                    message=f"Invalid '{level}.{name}': expected an integer >= 1 or \"inf\".",
                    code="invalid_value",
                    param=f"{level}.{name}",
                    event_id=client_event_id,
                )
            )
        if clamped != body[name] or type(body[name]) is not int:
            changes[name] = clamped
    if GA_TOKENS not in body and BETA_TOKENS not in body and insert_missing:
        changes[_insert_name(body, level)] = ceiling
    if not changes:
        return UNCHANGED
    rewritten = copy.deepcopy(dict(event))
    target = dict(rewritten.get(level) or {})
    target.update(changes)
    rewritten[level] = target
    return Rewritten(rewritten, tuple(f"{level}.{name}" for name in changes))


def _insert_name(body: Mapping[str, Any], level: str) -> str:
    """The field name upstream will read: beta-shaped bodies get the beta name."""
    if level == "session":
        return GA_TOKENS if "type" in body else BETA_TOKENS  # GA requires session.type
    keys = set(body)
    return BETA_TOKENS if keys & _BETA_RESPONSE_KEYS and not keys & _GA_RESPONSE_KEYS else GA_TOKENS


def _allowlists(body: Mapping[str, Any], level: str, policy: TenantPolicy, event_id: str | None) -> Refused | None:
    if level == "session":
        model = body.get("model")
        if isinstance(model, str) and not policy.allows_model(model):
            return _refuse("model_not_allowed", f"{level}.model", f"Model '{model}'", "models", event_id)
    for path, voice in _voices(body, level):
        if not policy.allows_voice(voice):
            return _refuse("voice_not_allowed", path, f"Voice '{voice}'", "voices", event_id)
    tools = body.get("tools")
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            refusal = _tool(tool, f"{level}.tools[{index}]", policy, event_id)
            if refusal is not None:
                return refusal
    return None


def _voices(body: Mapping[str, Any], level: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    audio = body.get("audio")
    output = audio.get("output") if isinstance(audio, Mapping) else None
    candidates = [
        (f"{level}.audio.output.voice", output.get("voice") if isinstance(output, Mapping) else None),
        (f"{level}.voice", body.get("voice")),
    ]
    for path, voice in candidates:
        if isinstance(voice, str):
            found.append((path, voice))
        elif isinstance(voice, Mapping):
            # A custom voice `{"id": "voice_…"}` is allowed only if its id is listed.
            voice_id = voice.get("id")
            found.append((f"{path}.id", voice_id if isinstance(voice_id, str) else repr(voice_id)))
        elif voice is not None:
            found.append((path, repr(voice)))
    return found


def _tool(tool: object, path: str, policy: TenantPolicy, event_id: str | None) -> Refused | None:
    if not isinstance(tool, Mapping):
        return None  # malformed; upstream refuses it and it grants nothing
    kind = tool.get("type", "function")
    if kind == "function":
        name = tool.get("name")
        if isinstance(name, str) and policy.allows_tool(name):
            return None
        return _refuse("tool_not_allowed", f"{path}.name", f"Function tool '{name}'", "tools", event_id)
    if kind == "mcp":
        label = tool.get("server_label")
        if isinstance(label, str) and policy.allows_tool(label):
            return None
        return _refuse("tool_not_allowed", f"{path}.server_label", f"MCP server '{label}'", "tools", event_id)
    # Unknown tool kinds fail closed: a policy cannot allow what it cannot name.
    return _refuse("tool_not_allowed", f"{path}.type", f"Tool type '{kind}'", "tools", event_id)


def _refuse(code: str, param: str, what: str, policy_list: str, event_id: str | None) -> Refused:
    message = f"{what} is not allowed by this tenant's policy (see the policy's '{policy_list}' list)."
    return Refused(ErrorDetail(message=message, code=code, param=param, event_id=event_id))
