"""One model response as a sequence of event batches the connection sends one by one.

`ResponseRun.steps()` yields `Step`s; the connection sends each step's events and may wait
between steps (latency, audio pacing), which is where `cancel()` can cut in. Nothing here
does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from emulator.audio import AudioFormat, assistant_audio
from emulator.config import RateLimits
from emulator.conversation import Conversation, Item
from emulator.errors import new_id
from emulator.session_config import ResponseSettings, SessionLocks
from emulator.usage import (
    OUTPUT_AUDIO_MS_PER_CHAR,
    Segment,
    instructions_segment,
    plan_output,
    produced,
    reply_for,
    response_usage,
    text_tokens,
    tools_segment,
)

AUDIO_DELTA_MS = 100
_CHARS_PER_AUDIO_DELTA = AUDIO_DELTA_MS // OUTPUT_AUDIO_MS_PER_CHAR
FUNCTION_ARGUMENTS = "{}"


@dataclass
class Step:
    events: list[dict[str, Any]]
    audio_ms: int = 0  # audio carried by this step, for real-time pacing


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def choose_tool_call(settings: ResponseSettings, last_input: dict[str, Any] | None) -> str | None:
    """The function to call instead of speaking, if any.

    `tool_choice` "none" never calls; {"type": "function", "name": X} calls X; "required"
    calls the first function tool; "auto" calls a function tool whose name follows "call "
    in the user's latest text (e.g. "please call get_weather").
    """
    names = [str(t["name"]) for t in settings.tools if t.get("type") == "function"]
    choice = settings.tool_choice
    if not names or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        return str(choice.get("name"))
    if choice == "required":
        return names[0]
    text = (last_input or {}).get("text", "").lower()
    return next((n for n in names if f"call {n.lower()}" in text), None)


class ResponseRun:
    """A response from `response.created` to `response.done`."""

    def __init__(
        self,
        settings: ResponseSettings,
        *,
        context_items: list[Item],
        previous_context: list[Segment],
        conversation: Conversation | None,
        rate_limits: RateLimits,
        locks: SessionLocks,
        on_finish: Callable[[ResponseRun], None],
    ) -> None:
        self.id = new_id("resp")
        self.settings = settings
        self.conversation = conversation  # None for an out-of-band response
        self.rate_limits = rate_limits
        self.locks = locks
        self.on_finish = on_finish
        self.finished = False
        self.usage: dict[str, Any] | None = None
        self.context: list[Segment] = []
        if settings.instructions:
            self.context.append(instructions_segment(settings.instructions))
        if settings.tools:
            self.context.append(tools_segment(settings.tools))
        self.context += [s for item in context_items for s in item.segments()]
        self.previous_context = previous_context
        last_input = next((i.last_input() for i in reversed(context_items) if i.last_input()), None)
        self.tool_name = choose_tool_call(settings, last_input)
        self.audio = settings.output_modalities == ["audio"]
        self.plan = plan_output(reply_for(last_input), audio=self.audio, max_output_tokens=settings.max_output_tokens)
        self.output: list[Item] = []
        self._spoken = ""  # produced so far
        self._part_open = False
        self._format = AudioFormat.parse(settings.output_format)

    # --- the stream ----------------------------------------------------------------------

    def start(self) -> list[dict[str, Any]]:
        """The events that announce the response; sent before any `steps()`."""
        limits = self.rate_limits.start_response()
        return [
            _event("response.created", response=self._response("in_progress", None)),
            _event("rate_limits.updated", rate_limits=limits),
        ]

    def steps(self) -> Iterator[Step]:
        """The rest of the response, one batch of events at a time."""
        if self.tool_name is not None:
            yield from self._function_call_steps()
            return
        yield Step(self._open_message())
        if self.audio:
            for start in range(0, len(self.plan.text), _CHARS_PER_AUDIO_DELTA):
                yield self._audio_delta(self.plan.text[start : start + _CHARS_PER_AUDIO_DELTA])
        else:
            for word in re.findall(r"\S+\s*|\s+", self.plan.text):
                self._spoken += word
                yield Step([self._content_event("response.output_text.delta", delta=word)])
        status = "incomplete" if self.plan.truncated else "completed"
        details = {"type": "incomplete", "reason": "max_output_tokens"} if self.plan.truncated else None
        yield Step(self._finish(status, details))

    def cancel(self, reason: str) -> list[dict[str, Any]]:
        """End now with status `cancelled` (`client_cancelled` or `turn_detected`)."""
        if self.finished:
            return []
        return self._finish("cancelled", {"type": "cancelled", "reason": reason})

    def abandon(self) -> None:
        """Stop without any further event (the session is going away)."""
        self.finished = True

    # --- building blocks -----------------------------------------------------------------

    def _response(self, status: str, details: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": details,
            "output": [item.wire() for item in self.output] if status != "in_progress" else [],
            "conversation_id": self.conversation.id if self.conversation else None,
            "output_modalities": self.settings.output_modalities,
            "max_output_tokens": self.settings.max_output_tokens,
            "audio": {"output": {"format": self.settings.output_format, "voice": self.settings.voice}},
            "usage": self.usage,
            "metadata": self.settings.metadata,
        }

    def _add_output(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        item = Item(data)
        self.output.append(item)
        events = [_event("response.output_item.added", response_id=self.id, output_index=0, item=item.wire())]
        if self.conversation is not None:
            previous = self.conversation.add(item)
            events.append(_event("conversation.item.added", previous_item_id=previous, item=item.wire()))
        return events

    def _content_event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return _event(kind, response_id=self.id, item_id=self.output[0].id, output_index=0, content_index=0, **fields)

    def _open_message(self) -> list[dict[str, Any]]:
        events = self._add_output(
            {
                "id": new_id("item"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        )
        part = {"type": "audio", "transcript": ""} if self.audio else {"type": "text", "text": ""}
        self._part_open = True
        return [*events, self._content_event("response.content_part.added", part=part)]

    def _audio_delta(self, chars: str) -> Step:
        ms = len(chars) * OUTPUT_AUDIO_MS_PER_CHAR
        self._spoken += chars
        self.output[0].audio_ms += ms
        self.locks.audio_spoken = True
        audio = base64.b64encode(assistant_audio(ms, self._format)).decode()
        return Step(
            [
                self._content_event("response.output_audio.delta", delta=audio),
                self._content_event("response.output_audio_transcript.delta", delta=chars),
            ],
            audio_ms=ms,
        )

    def _function_call_steps(self) -> Iterator[Step]:
        call_id = new_id("call", 16)
        yield Step(
            self._add_output(
                {
                    "id": new_id("item"),
                    "object": "realtime.item",
                    "type": "function_call",
                    "status": "in_progress",
                    "name": self.tool_name,
                    "call_id": call_id,
                    "arguments": "",
                }
            )
        )
        common = {"response_id": self.id, "item_id": self.output[0].id, "output_index": 0, "call_id": call_id}
        self.output[0].data["arguments"] = FUNCTION_ARGUMENTS
        yield Step([_event("response.function_call_arguments.delta", **common, delta=FUNCTION_ARGUMENTS)])
        yield Step(self._finish("completed", None))

    def _finish(self, status: str, details: dict[str, Any] | None) -> list[dict[str, Any]]:
        self.finished = True
        events: list[dict[str, Any]] = []
        output_text_tokens = output_audio_tokens = 0
        if self.output:
            item = self.output[0]
            item.data["status"] = "completed" if status == "completed" else "incomplete"
            if item.data["type"] == "function_call":
                if status == "completed":
                    events.append(
                        _event(
                            "response.function_call_arguments.done",
                            response_id=self.id,
                            item_id=item.id,
                            output_index=0,
                            call_id=item.data["call_id"],
                            name=self.tool_name,
                            arguments=item.data["arguments"],
                        )
                    )
                output_text_tokens = text_tokens(str(self.tool_name) + item.data["arguments"])
            else:
                events += self._close_message(item)
                done = produced(self._spoken, audio=self.audio)
                output_text_tokens, output_audio_tokens = done.text_tokens, done.audio_tokens
            events.append(_event("response.output_item.done", response_id=self.id, output_index=0, item=item.wire()))
            if self.conversation is not None:
                previous = self._previous_in_conversation(item)
                events.append(_event("conversation.item.done", previous_item_id=previous, item=item.wire()))
        self.usage = response_usage(self.context, self.previous_context, output_text_tokens, output_audio_tokens)
        events.append(_event("response.done", response=self._response(status, details)))
        self.on_finish(self)
        return events

    def _close_message(self, item: Item) -> list[dict[str, Any]]:
        if self.audio:
            item.data["content"] = [{"type": "output_audio", "transcript": self._spoken}]
            part = {"type": "audio", "transcript": self._spoken}
            closing = [
                self._content_event("response.output_audio.done"),
                self._content_event("response.output_audio_transcript.done", transcript=self._spoken),
            ]
        else:
            item.data["content"] = [{"type": "output_text", "text": self._spoken}]
            part = {"type": "text", "text": self._spoken}
            closing = [self._content_event("response.output_text.done", text=self._spoken)]
        if self._part_open:
            self._part_open = False
            closing.append(self._content_event("response.content_part.done", part=part))
        return closing

    def _previous_in_conversation(self, item: Item) -> str | None:
        assert self.conversation is not None
        items = self.conversation.items
        if item not in items:
            return None
        index = items.index(item)
        return items[index - 1].id if index else None
