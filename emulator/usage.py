"""Deterministic token accounting and reply planning (see docs/emulator.md, "Usage rules").

Everything here is a pure function, so a test can predict exactly what `response.done`
will report for the input it sends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TEXT_BYTES_PER_TOKEN = 4
INPUT_AUDIO_MS_PER_TOKEN = 100
OUTPUT_AUDIO_MS_PER_TOKEN = 50
IMAGE_TOKENS = 85
# The assistant "speaks" each character of its transcript for this long.
OUTPUT_AUDIO_MS_PER_CHAR = 50
CACHE_BLOCK_TOKENS = 64
GREETING = "Hello! How can I help you today?"
# Transcription models billed by duration; every other model is billed in tokens.
DURATION_BILLED_TRANSCRIBERS = frozenset({"whisper-1", "gpt-realtime-whisper", "gpt-live-transcribe"})


def text_tokens(text: str) -> int:
    """ceil(UTF-8 bytes / 4)."""
    return math.ceil(len(text.encode()) / TEXT_BYTES_PER_TOKEN)


def input_audio_tokens(ms: float) -> int:
    """1 token per started 100 ms of audio the model hears."""
    return math.ceil(ms / INPUT_AUDIO_MS_PER_TOKEN)


def output_audio_tokens(ms: float) -> int:
    """1 token per started 50 ms of audio the model speaks."""
    return math.ceil(ms / OUTPUT_AUDIO_MS_PER_TOKEN)


@dataclass(frozen=True)
class Segment:
    """One piece of a response's input context. `key` identifies it for prompt caching."""

    key: str
    kind: str  # "text" | "audio" | "image"
    tokens: int


def instructions_segment(instructions: str) -> Segment:
    return Segment(f"instructions:{instructions}", "text", text_tokens(instructions))


def tools_segment(tools: Sequence[dict[str, Any]]) -> Segment:
    """Tools count as the text of their names, descriptions and parameter schemas."""
    text = "".join(str(t.get("name", "")) + str(t.get("description", "")) + str(t.get("parameters", "")) for t in tools)
    return Segment(f"tools:{text}", "text", text_tokens(text))


def reply_for(last_input: dict[str, Any] | None) -> str:
    """The assistant's deterministic reply to the latest user-side input of the context.

    `last_input` is `{"text": str}`, `{"audio_ms": int}` or `{"tool_output": str}`; `None`
    when the context holds no user input.
    """
    if last_input is None:
        return GREETING
    if "text" in last_input:
        return f"You said: {last_input['text']}"
    if "audio_ms" in last_input:
        return f"I heard {last_input['audio_ms']} milliseconds of audio."
    return f"The tool returned: {last_input['tool_output']}"


def transcript_for(audio_ms: int) -> str:
    """What input transcription "hears" in `audio_ms` of user audio."""
    return f"Emulated speech of {audio_ms} milliseconds."


@dataclass(frozen=True)
class OutputPlan:
    """How much of a planned reply fits under `max_output_tokens`."""

    text: str  # what is actually produced (a prefix of the planned reply)
    truncated: bool
    text_tokens: int
    audio_tokens: int
    audio_ms: int

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.audio_tokens


def produced(text: str, *, audio: bool) -> OutputPlan:
    """Output accounting for `text` fully produced (as a spoken transcript when `audio`)."""
    audio_ms = len(text) * OUTPUT_AUDIO_MS_PER_CHAR if audio else 0
    return OutputPlan(text, False, text_tokens(text), output_audio_tokens(audio_ms), audio_ms)


def plan_output(reply: str, *, audio: bool, max_output_tokens: int | str) -> OutputPlan:
    """The longest prefix of `reply` whose output tokens stay within `max_output_tokens`."""
    full = produced(reply, audio=audio)
    if max_output_tokens == "inf" or full.tokens <= int(max_output_tokens):
        return full
    limit = int(max_output_tokens)
    lo, hi = 0, len(reply)  # produced(reply[:lo]) fits; produced(reply[:hi]) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if produced(reply[:mid], audio=audio).tokens <= limit:
            lo = mid
        else:
            hi = mid
    cut = produced(reply[:lo], audio=audio)
    return OutputPlan(cut.text, True, cut.text_tokens, cut.audio_tokens, cut.audio_ms)


def cached_split(context: Sequence[Segment], previous: Sequence[Segment]) -> dict[str, int]:
    """Cached tokens per kind: the leading segments shared with the previous response's
    context, rounded down to a multiple of 64 tokens, attributed to kinds in context order."""
    shared = 0
    for now, before in zip(context, previous, strict=False):
        if now != before:
            break
        shared += now.tokens
    budget = shared - shared % CACHE_BLOCK_TOKENS
    split = {"text": 0, "audio": 0, "image": 0}
    for segment in context:
        if budget <= 0:
            break
        take = min(segment.tokens, budget)
        split[segment.kind] += take
        budget -= take
    return split


def response_usage(
    context: Sequence[Segment], previous: Sequence[Segment], output_text_tokens: int, output_audio_tokens: int
) -> dict[str, Any]:
    """The `usage` object of `response.done`."""
    inputs = {"text": 0, "audio": 0, "image": 0}
    for segment in context:
        inputs[segment.kind] += segment.tokens
    cached = cached_split(context, previous)
    input_total = sum(inputs.values())
    output_total = output_text_tokens + output_audio_tokens
    return {
        "total_tokens": input_total + output_total,
        "input_tokens": input_total,
        "output_tokens": output_total,
        "input_token_details": {
            "text_tokens": inputs["text"],
            "audio_tokens": inputs["audio"],
            "image_tokens": inputs["image"],
            "cached_tokens": sum(cached.values()),
            "cached_tokens_details": {
                "text_tokens": cached["text"],
                "audio_tokens": cached["audio"],
                "image_tokens": cached["image"],
            },
        },
        "output_token_details": {"text_tokens": output_text_tokens, "audio_tokens": output_audio_tokens},
    }


def transcription_usage(model: str, audio_ms: int, transcript: str, prompt: str = "") -> dict[str, Any]:
    """`usage` of `conversation.item.input_audio_transcription.completed`."""
    if model in DURATION_BILLED_TRANSCRIBERS:
        return {"type": "duration", "seconds": round(audio_ms / 1000, 3)}
    audio = input_audio_tokens(audio_ms)
    prompt_tokens = text_tokens(prompt)
    output = text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "output_tokens": output,
        "total_tokens": audio + prompt_tokens + output,
        "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio},
    }
