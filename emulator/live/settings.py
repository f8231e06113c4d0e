"""GPT-Live session configurations: strict validation and the resolved session resource.

The Live server rejects unknown fields (unlike Realtime), so every object is checked against
the keys the SDK declares for it, and a stray key is an `unknown_parameter` error naming its
path (`session.voice`). Which shape applies depends on where the config comes from: the
WebSocket `session.start`, a WebRTC create (no `audio.format`, plus `wake_policy` and
`idle_timeout_s`), a SIP accept (`type: "live"` required), a fork, or `session.update`.
"""

from __future__ import annotations

import copy
from typing import Any

from emulator.errors import ProtocolError
from emulator.usage import text_tokens

DEFAULT_VOICE = "marin"
DEFAULT_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
MAX_INSTRUCTIONS_TOKENS = 16_384
MAX_INPUT_MESSAGES = 128
SERVICE_TIERS = ("auto", "default", "fast_tier_temp_pilot", "flex", "priority", "ultrafast")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
TRIGGER_EVENTS = ("session.input_transcript.delta", "session.output_transcript.delta")

# Nested key sets; `None` marks a leaf checked elsewhere (or free-form, like tools).
_RESPONSES: dict[str, Any] = {
    "model": None,
    "instructions": None,
    "max_output_tokens": None,
    "parallel_tool_calls": None,
    "reasoning": {"effort": None, "summary": None},
    "service_tier": None,
    "text": {"verbosity": None},
    "tool_choice": None,
    "tools": None,
}
_CLIENT = {"data_channel": {"allowed_client_events": None, "allowed_server_events": None}}
_COMMON: dict[str, Any] = {
    "model": None,
    "delegation": None,
    "input": None,
    "instructions": None,
    "safety_identifier": None,
    "store": None,
    "triggers": None,
}
WEBSOCKET_START = {**_COMMON, "client": _CLIENT, "audio": {"format": None, "output": {"voice": None}}}
MEDIA_START = {
    **_COMMON,
    "client": _CLIENT,
    "audio": {"output": {"voice": None}},
    "wake_policy": {"type": None, "vad_threshold": None},
    "idle_timeout_s": None,
}
SIP_ACCEPT = {**_COMMON, "type": None, "audio": {"output": {"voice": None}}}
SIP_OUTBOUND = {**_COMMON, "audio": {"output": {"voice": None}}}
WEBSOCKET_FORK = {"audio": {"format": None}, "client": _CLIENT, "delegation": None, "store": None}
MEDIA_FORK = {"client": _CLIENT, "delegation": None, "store": None}
UPDATE = {"delegation": None, "triggers": None}


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError.invalid(param, f"Invalid type for '{param}': expected an object.")
    return value


def check_keys(value: Any, shape: dict[str, Any], param: str) -> dict[str, Any]:
    """`value` as an object whose keys (recursively) are all in `shape`."""
    obj = _object(value, param)
    for key, item in obj.items():
        if key not in shape:
            raise ProtocolError.unknown_parameter(f"{param}.{key}")
        if isinstance(shape[key], dict) and item is not None:
            check_keys(item, shape[key], f"{param}.{key}")
    return obj


def check_format(value: Any, param: str) -> dict[str, Any]:
    fmt = check_keys(value, {"type": None, "rate": None}, param)
    kind, rate = fmt.get("type"), fmt.get("rate")
    if kind == "audio/pcm" and rate in (16000, 24000):
        return {"type": kind, "rate": rate}
    if kind in ("audio/pcmu", "audio/pcma") and rate in (None, 8000):
        return {"type": kind, "rate": 8000}
    raise ProtocolError.invalid(
        param, "Invalid audio format: use audio/pcm at 16000 or 24000 Hz, or audio/pcmu or audio/pcma at 8000 Hz."
    )


def _check_responses(value: Any, param: str, *, start: bool) -> dict[str, Any]:
    responses = check_keys(value, _RESPONSES, param)
    if start and not isinstance(responses.get("model"), str):
        raise ProtocolError.missing(f"{param}.model")
    tokens = responses.get("max_output_tokens")
    if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1):
        raise ProtocolError.invalid(f"{param}.max_output_tokens", "max_output_tokens must be a positive integer.")
    tier = responses.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise ProtocolError.invalid(f"{param}.service_tier", f"Invalid value: '{tier}'.")
    effort = (responses.get("reasoning") or {}).get("effort")
    if effort is not None and effort not in EFFORTS:
        raise ProtocolError.invalid(f"{param}.reasoning.effort", f"Invalid value: '{effort}'.")
    tools = responses.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) and "type" in t for t in tools)):
        raise ProtocolError.invalid(f"{param}.tools", "tools must be a list of objects with a 'type'.")
    return responses


def check_delegation(value: Any, param: str, *, start: bool, only_responses: bool = False) -> dict[str, Any] | None:
    """A delegation object (`start`: the startup form, else the update form with every field optional)."""
    if value is None:
        return None
    kind = _object(value, param).get("type")
    allowed = ("responses",) if only_responses else ("client", "responses", "decisions")
    if kind not in allowed:
        raise ProtocolError.invalid(f"{param}.type", f"Invalid value: '{kind}'. Supported values are: {allowed}.")
    if kind == "client":
        return check_keys(value, {"type": None}, param)
    delegation = check_keys(value, {"type": None, "acknowledgement_delay_ms": None, str(kind): None}, param)
    delay = delegation.get("acknowledgement_delay_ms")
    if delay is not None and (not isinstance(delay, int) or delay < 0):
        raise ProtocolError.invalid(f"{param}.acknowledgement_delay_ms", "Must be a non-negative integer.")
    if kind == "responses":
        if start and "responses" not in delegation:
            raise ProtocolError.missing(f"{param}.responses")
        if "responses" in delegation:
            _check_responses(delegation["responses"], f"{param}.responses", start=start)
    else:
        decisions = check_keys(
            delegation.get("decisions", {}), {"model": None, "questions": None}, f"{param}.decisions"
        )
        if start and not isinstance(decisions.get("model"), str):
            raise ProtocolError.missing(f"{param}.decisions.model")
    return delegation


def check_triggers(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ProtocolError.invalid(param, f"Invalid type for '{param}': expected an array.")
    seen: set[str] = set()
    for index, trigger in enumerate(value):
        where = f"{param}[{index}]"
        check_keys(trigger, {"type": None, "event_type": None, "decisions": {"questions": None}}, where)
        if trigger.get("type") != "decisions" or trigger.get("event_type") not in TRIGGER_EVENTS:
            raise ProtocolError.invalid(where, "A trigger needs type 'decisions' and a transcript event_type.")
        if trigger["event_type"] in seen:
            raise ProtocolError.invalid(where, "At most one Decisions trigger per transcript event type.")
        seen.add(trigger["event_type"])
    return value


def check_start(value: Any, shape: dict[str, Any], models: tuple[str, ...], param: str = "session") -> dict[str, Any]:
    """A startup config (`WEBSOCKET_START`, `MEDIA_START` or `SIP_ACCEPT`), validated."""
    config = check_keys(value, shape, param)
    model = config.get("model")
    if not isinstance(model, str):
        raise ProtocolError.missing(f"{param}.model")
    if model not in models:
        raise ProtocolError(
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param=f"{param}.model",
        )
    if shape is SIP_ACCEPT and config.get("type") != "live":
        raise ProtocolError.invalid(f"{param}.type", "Accepting a Live call needs session.type 'live'.")
    instructions = config.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ProtocolError.invalid(f"{param}.instructions", "instructions must be a string.")
    if isinstance(instructions, str) and text_tokens(instructions) > MAX_INSTRUCTIONS_TOKENS:
        raise ProtocolError.invalid(f"{param}.instructions", "instructions exceed 16,384 tokens.")
    items = config.get("input")
    if items is not None and (not isinstance(items, list) or len(items) > MAX_INPUT_MESSAGES):
        raise ProtocolError.invalid(f"{param}.input", "input must be a list of at most 128 messages.")
    audio = config.get("audio") or {}
    if audio.get("format") is not None:
        check_format(audio["format"], f"{param}.audio.format")
    check_delegation(config.get("delegation"), f"{param}.delegation", start=True)
    if config.get("triggers") is not None:
        check_triggers(config["triggers"], f"{param}.triggers")
    timeout = config.get("idle_timeout_s")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 1):
        raise ProtocolError.invalid(f"{param}.idle_timeout_s", "idle_timeout_s must be a positive integer.")
    return config


def resolve(config: dict[str, Any], *, session_id: str, expires_at: int, websocket: bool) -> dict[str, Any]:
    """The session resource `session.started` reports for a validated startup config."""
    audio: dict[str, Any] = {"output": {"voice": (config.get("audio") or {}).get("output", {}).get("voice")}}
    audio["output"]["voice"] = audio["output"]["voice"] or DEFAULT_VOICE
    if websocket:
        audio["format"] = (config.get("audio") or {}).get("format") or dict(DEFAULT_FORMAT)
    session: dict[str, Any] = {
        "id": session_id,
        "expires_at": expires_at,
        "model": config["model"],
        "status": "active",
        "instructions": config.get("instructions") or "",
        "audio": audio,
        "delegation": _resolved_delegation(config.get("delegation")),
        "store": bool(config.get("store", False)),
    }
    for key in ("client", "input", "safety_identifier", "triggers"):
        if config.get(key) is not None:
            session[key] = copy.deepcopy(config[key])
    return session


def _resolved_delegation(delegation: dict[str, Any] | None) -> dict[str, Any] | None:
    if delegation is None:
        return None
    resolved = copy.deepcopy(delegation)
    if resolved["type"] != "client":
        resolved.setdefault("acknowledgement_delay_ms", 400 if resolved["type"] == "decisions" else 0)
    return resolved


def merge_delegation(
    current: dict[str, Any] | None, update: dict[str, Any] | None, param: str
) -> dict[str, Any] | None:
    """Apply an update-form delegation: the type cannot change; omitted fields keep their values."""
    if update is None:
        return current
    current_type = (current or {"type": "client"})["type"]
    if update["type"] != current_type:
        raise ProtocolError.invalid(f"{param}.type", "The delegation type cannot change after the session starts.")
    merged: dict[str, Any] = copy.deepcopy(current) if current is not None else {"type": "client"}
    for key, value in update.items():
        if key in ("responses", "decisions") and isinstance(value, dict):
            merged.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fork_config(parent: dict[str, Any], overrides: Any, *, websocket: bool, param: str = "session") -> dict[str, Any]:
    """The startup config of a fork: the parent's resolved settings with the overrides applied.

    The model is inherited (never sent); a delegation override uses the update form and
    must stay `responses`.
    """
    shape = WEBSOCKET_FORK if websocket else MEDIA_FORK
    changes = check_keys(overrides if overrides is not None else {}, shape, param)
    config: dict[str, Any] = {"model": parent["model"], "store": parent.get("store", False)}
    for key in ("instructions", "input", "safety_identifier", "triggers", "delegation"):
        if parent.get(key) is not None:
            config[key] = copy.deepcopy(parent[key])
    audio: dict[str, Any] = {"output": {"voice": parent["audio"]["output"]["voice"]}}
    if websocket:
        fmt = (changes.get("audio") or {}).get("format")
        audio["format"] = check_format(fmt, f"{param}.audio.format") if fmt is not None else dict(DEFAULT_FORMAT)
    config["audio"] = audio
    if "delegation" in changes:
        update = check_delegation(changes["delegation"], f"{param}.delegation", start=False, only_responses=True)
        config["delegation"] = merge_delegation(config.get("delegation"), update, f"{param}.delegation")
    for key in ("client", "store"):
        if key in changes:
            config[key] = copy.deepcopy(changes[key])
    return config
