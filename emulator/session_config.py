"""The effective session configuration: defaults, `session.update` merging and validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from emulator.audio import AudioFormat, AudioFormatError
from emulator.errors import ProtocolError

PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
DEFAULT_VOICE = "marin"
DEFAULT_TRANSCRIBER = "gpt-4o-mini-transcribe"
# Transcribers without server or semantic VAD: turns are committed by the client.
VADLESS_TRANSCRIBERS = frozenset({"gpt-live-transcribe", "gpt-realtime-whisper"})

SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
# semantic_vad is emulated as energy VAD whose silence window depends on eagerness.
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}

REALTIME_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "tracing",
        "truncation",
        "prompt",
        "include",
        "reasoning",
        "parallel_tool_calls",
    }
)
TRANSCRIPTION_KEYS = frozenset({"type", "audio", "include"})


def default_realtime_session(session_id: str, model: str, instructions: str, expires_at: int) -> dict[str, Any]:
    session: dict[str, Any] = {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": instructions,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(PCM_FORMAT), "voice": DEFAULT_VOICE, "speed": 1.0},
        },
        "include": None,
    }
    if model.startswith("gpt-realtime-2"):
        session["reasoning"] = {"effort": "low"}
    return session


def default_transcription_session(session_id: str, expires_at: int) -> dict[str, Any]:
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": {"model": DEFAULT_TRANSCRIBER, "language": None, "prompt": ""},
                "noise_reduction": None,
                "turn_detection": {
                    k: SERVER_VAD_DEFAULTS[k] for k in ("type", "threshold", "prefix_padding_ms", "silence_duration_ms")
                },
            }
        },
        "include": None,
    }


def _require_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError.invalid(param, f"Invalid type for '{param}': expected an object.")
    return value


def check_format(value: Any, param: str) -> dict[str, Any]:
    try:
        return AudioFormat.parse(value).as_session_value()
    except AudioFormatError as exc:
        raise ProtocolError.invalid(param, f"Invalid value for '{param}': {exc}.") from exc


def check_turn_detection(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    value = _require_dict(value, param)
    defaults = {"server_vad": SERVER_VAD_DEFAULTS, "semantic_vad": SEMANTIC_VAD_DEFAULTS}.get(value.get("type"))
    if defaults is None:
        raise ProtocolError.invalid(
            f"{param}.type", "Invalid value for turn_detection.type: expected 'server_vad' or 'semantic_vad'."
        )
    return {**defaults, **value}


def check_modalities(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1 or value[0] not in ("audio", "text"):
        raise ProtocolError.invalid(param, f"Invalid value for '{param}': expected ['audio'] or ['text'].")
    return list(value)


def check_max_output_tokens(value: Any, param: str) -> int | str:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value  # type: ignore[no-any-return]
    raise ProtocolError.invalid(param, f"Invalid value for '{param}': expected an integer >= 1 or 'inf'.")


def check_voice(value: Any, param: str) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value
    raise ProtocolError.invalid(param, f"Invalid value for '{param}': expected a voice name or {{'id': ...}}.")


def check_tools(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ProtocolError.invalid(param, f"Invalid type for '{param}': expected an array.")
    for i, tool in enumerate(value):
        tool = _require_dict(tool, f"{param}[{i}]")
        if tool.get("type") == "function" and not isinstance(tool.get("name"), str):
            raise ProtocolError.missing(f"{param}[{i}].name")
        if tool.get("type") not in ("function", "mcp"):
            raise ProtocolError.invalid(f"{param}[{i}].type", "Invalid tool type: expected 'function' or 'mcp'.")
    return list(value)


@dataclass
class SessionLocks:
    """What may no longer change: the model (fixed once chosen) and the voice (once spoken)."""

    model_fixed: bool
    audio_spoken: bool = False


def merge_update(current: dict[str, Any], update: Any, locks: SessionLocks) -> dict[str, Any]:
    """Return the new effective session after a `session.update`, or raise `ProtocolError`.

    Only the fields sent change; nested `audio.input` / `audio.output` objects merge key by key.
    """
    update = _require_dict(update, "session")
    if "type" not in update:
        raise ProtocolError.missing("session.type")
    if update["type"] != current["type"]:
        raise ProtocolError.invalid(
            "session.type", f"Cannot change a {current['type']} session to type {update['type']!r}."
        )
    allowed = REALTIME_KEYS if current["type"] == "realtime" else TRANSCRIPTION_KEYS
    for key in update:
        if key not in allowed:
            raise ProtocolError.unknown_parameter(f"session.{key}")

    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key == "audio":
            _merge_audio(merged, _require_dict(value, "session.audio"), locks)
        elif key == "model":
            if value != current.get("model") and locks.model_fixed:
                raise ProtocolError.invalid("session.model", "Cannot change the model of an existing session.")
            if not isinstance(value, str) or not value:
                raise ProtocolError.invalid("session.model", "Invalid value for 'session.model'.")
            merged["model"] = value
        elif key == "output_modalities":
            merged[key] = check_modalities(value, "session.output_modalities")
        elif key == "max_output_tokens":
            merged[key] = check_max_output_tokens(value, "session.max_output_tokens")
        elif key == "tools":
            merged[key] = check_tools(value, "session.tools")
        elif key == "instructions" and not isinstance(value, str):
            raise ProtocolError.invalid("session.instructions", "Invalid type for 'session.instructions'.")
        else:
            merged[key] = copy.deepcopy(value)
    model = (merged["audio"]["input"].get("transcription") or {}).get("model")
    if model in VADLESS_TRANSCRIBERS and merged["audio"]["input"].get("turn_detection") is not None:
        raise ProtocolError.invalid(
            "session.audio.input.turn_detection",
            f"{model} has no voice activity detection: set turn_detection to null.",
        )
    return merged


def _merge_audio(merged: dict[str, Any], audio: dict[str, Any], locks: SessionLocks) -> None:
    for direction in audio:
        if direction not in merged["audio"]:
            raise ProtocolError.unknown_parameter(f"session.audio.{direction}")
        part = _require_dict(audio[direction], f"session.audio.{direction}")
        target = merged["audio"][direction]
        for key, value in part.items():
            param = f"session.audio.{direction}.{key}"
            if key == "format":
                target[key] = check_format(value, param)
            elif key == "turn_detection":
                target[key] = check_turn_detection(value, param)
            elif key == "transcription" and value is not None:
                value = _require_dict(value, param)
                if not isinstance(value.get("model"), str):
                    raise ProtocolError.missing(f"{param}.model")
                target[key] = dict(value)
            elif key == "voice":
                voice = check_voice(value, param)
                if voice != target.get("voice") and locks.audio_spoken:
                    raise ProtocolError.invalid(
                        param, "Cannot update a conversation's voice if assistant audio is present."
                    )
                target[key] = voice
            else:
                target[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class ResponseSettings:
    """The effective settings of one response: the session's, overridden by `response.create`."""

    conversation: str  # "auto" | "none"
    output_modalities: list[str]
    instructions: str
    tools: list[dict[str, Any]]
    tool_choice: Any
    max_output_tokens: int | str
    output_format: dict[str, Any]
    voice: Any
    metadata: dict[str, str] | None
    input: list[Any] | None


def response_settings(session: dict[str, Any], overrides: Any) -> ResponseSettings:
    """Resolve `response.create`'s `response` object against the session, or raise `ProtocolError`."""
    params = {} if overrides is None else _require_dict(overrides, "response")
    out = session["audio"]["output"]
    audio_out = _require_dict(
        _require_dict(params.get("audio", {}), "response.audio").get("output", {}), "response.audio.output"
    )
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise ProtocolError.invalid("response.conversation", "Invalid value: expected 'auto' or 'none'.")
    metadata = params.get("metadata")
    if metadata is not None:
        metadata = _require_dict(metadata, "response.metadata")
        if len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        ):
            raise ProtocolError.invalid("response.metadata", "Invalid metadata: at most 16 string pairs.")
    input_items = params.get("input")
    if input_items is not None and not isinstance(input_items, list):
        raise ProtocolError.invalid("response.input", "Invalid type for 'response.input': expected an array.")
    instructions = params.get("instructions", session["instructions"])
    if not isinstance(instructions, str):
        raise ProtocolError.invalid("response.instructions", "Invalid type for 'response.instructions'.")
    return ResponseSettings(
        conversation=conversation,
        output_modalities=check_modalities(
            params.get("output_modalities", session["output_modalities"]), "response.output_modalities"
        ),
        instructions=instructions,
        tools=check_tools(params.get("tools", session["tools"]), "response.tools"),
        tool_choice=params.get("tool_choice", session["tool_choice"]),
        max_output_tokens=check_max_output_tokens(
            params.get("max_output_tokens", session["max_output_tokens"]), "response.max_output_tokens"
        ),
        output_format=check_format(audio_out.get("format", out["format"]), "response.audio.output.format"),
        voice=check_voice(audio_out.get("voice", out["voice"]), "response.audio.output.voice"),
        metadata=metadata,
        input=input_items,
    )


def vad_parameters(turn_detection: dict[str, Any]) -> tuple[float, int, int]:
    """(threshold, silence_duration_ms, prefix_padding_ms) of a server_vad/semantic_vad config."""
    if turn_detection["type"] == "semantic_vad":
        return 0.5, SEMANTIC_SILENCE_MS.get(turn_detection.get("eagerness") or "auto", 500), 300
    return (
        float(turn_detection.get("threshold") or 0.5),
        int(turn_detection.get("silence_duration_ms") or 500),
        int(turn_detection.get("prefix_padding_ms") or 300),
    )
