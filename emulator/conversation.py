"""The conversation: its items in order, client item validation, and each item's token cost."""

from __future__ import annotations

import base64
import binascii
import copy
from dataclasses import dataclass, field
from typing import Any

from emulator.audio import AudioFormat
from emulator.errors import ProtocolError, new_id
from emulator.usage import IMAGE_TOKENS, Segment, input_audio_tokens, text_tokens

USER_CONTENT = frozenset({"input_text", "input_audio", "input_image"})
SYSTEM_CONTENT = frozenset({"input_text"})
ASSISTANT_CONTENT = frozenset({"output_text"})


@dataclass
class Item:
    """A conversation item: its wire shape plus the audio length the model hears."""

    data: dict[str, Any]
    audio_ms: int = 0
    # Per content index: how long each audio part is (for truncate).
    audio_parts: dict[int, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def wire(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def segments(self) -> list[Segment]:
        """This item's share of a response's input context."""
        d = self.data
        if d["type"] == "function_call":
            return [Segment(self._key(), "text", text_tokens(str(d.get("name", "")) + str(d.get("arguments", ""))))]
        if d["type"] == "function_call_output":
            return [Segment(self._key(), "text", text_tokens(str(d.get("output", ""))))]
        if d["type"] != "message":
            return []
        text = audio = images = 0
        for part in d.get("content", []):
            kind = part.get("type")
            if kind in ("input_text", "output_text"):
                text += text_tokens(part.get("text") or "")
            elif kind == "input_image":
                images += IMAGE_TOKENS
        audio = input_audio_tokens(self.audio_ms)
        parts = [("text", text), ("audio", audio), ("image", images)]
        return [Segment(f"{self._key()}:{kind}", kind, n) for kind, n in parts if n]

    def _key(self) -> str:
        return f"{self.id}:{self.audio_ms}:{len(str(self.data.get('content', self.data.get('arguments'))))}"

    def last_input(self) -> dict[str, Any] | None:
        """What a reply answers, if this is user-side input (see `usage.reply_for`)."""
        d = self.data
        if d["type"] == "function_call_output":
            return {"tool_output": d.get("output", "")}
        if d["type"] != "message" or d.get("role") != "user":
            return None
        texts = [p.get("text") or "" for p in d.get("content", []) if p.get("type") == "input_text"]
        if texts:
            return {"text": " ".join(texts)}
        if self.audio_ms:
            return {"audio_ms": self.audio_ms}
        return None


class Conversation:
    """The default conversation of a session."""

    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        self.items: list[Item] = []

    def find(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def get(self, item_id: Any, param: str = "item_id") -> Item:
        if not isinstance(item_id, str):
            raise ProtocolError.missing(param)
        item = self.find(item_id)
        if item is None:
            raise ProtocolError.invalid(param, f"Item with item_id '{item_id}' not found in the conversation.")
        return item

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert `item` (at the end, or after `previous_item_id`; "root" = first) and
        return the id of the item now before it."""
        if self.find(item.id) is not None:
            raise ProtocolError.invalid("item.id", f"Item with id '{item.id}' already exists.")
        if previous_item_id is None:
            previous = self.last_id()
            self.items.append(item)
            return previous
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        anchor = self.get(previous_item_id, "previous_item_id")
        self.items.insert(self.items.index(anchor) + 1, item)
        return anchor.id

    def delete(self, item_id: Any) -> Item:
        item = self.get(item_id)
        self.items.remove(item)
        return item

    def segments(self) -> list[Segment]:
        return [segment for item in self.items for segment in item.segments()]


def user_audio_item(item_id: str, audio_ms: int) -> Item:
    data = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
    return Item(data, audio_ms=audio_ms, audio_parts={0: audio_ms})


def decode_audio(value: Any, param: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError.missing(param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError.invalid(param, f"Invalid '{param}': expected base64-encoded audio bytes.") from exc


def client_item(raw: Any, input_format: AudioFormat, param: str = "item") -> Item:
    """Validate an item sent by the client (`conversation.item.create` or `response.input`)."""
    if not isinstance(raw, dict):
        raise ProtocolError.missing(param)
    kind = raw.get("type")
    data: dict[str, Any] = {"id": raw.get("id") or new_id("item"), "object": "realtime.item", "type": kind}
    if kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(raw.get(key), str):
                raise ProtocolError.missing(f"{param}.{key}")
        data.update(status="completed", call_id=raw["call_id"], output=raw["output"])
        return Item(data)
    if kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(raw.get(key), str):
                raise ProtocolError.missing(f"{param}.{key}")
        data.update(
            status="completed",
            name=raw["name"],
            arguments=raw["arguments"],
            call_id=raw.get("call_id") or new_id("call", 16),
        )
        return Item(data)
    if kind != "message":
        raise ProtocolError.invalid(
            f"{param}.type",
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', and 'function_call_output'.",
        )
    role = raw.get("role")
    allowed = {"user": USER_CONTENT, "system": SYSTEM_CONTENT, "assistant": ASSISTANT_CONTENT}.get(str(role))
    if allowed is None:
        raise ProtocolError.invalid(f"{param}.role", f"Invalid value: '{role}'. Expected user, assistant or system.")
    content = raw.get("content")
    if not isinstance(content, list):
        raise ProtocolError.missing(f"{param}.content")
    item = Item({**data, "status": "completed", "role": role, "content": []})
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        if not isinstance(part, dict) or part.get("type") not in allowed:
            kind_name = part.get("type") if isinstance(part, dict) else None
            raise ProtocolError.invalid(f"{where}.type", f"Invalid content type '{kind_name}' for a {role} message.")
        if part["type"] in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise ProtocolError.missing(f"{where}.text")
            item.data["content"].append({"type": part["type"], "text": part["text"]})
        elif part["type"] == "input_audio":
            audio = decode_audio(part.get("audio"), f"{where}.audio")
            ms = round(input_format.samples_in(audio) * 1000 / input_format.rate)
            item.audio_ms += ms
            item.audio_parts[index] = ms
            item.data["content"].append({"type": "input_audio", "transcript": part.get("transcript")})
        else:
            item.data["content"].append(
                {"type": "input_image", "image_url": part.get("image_url"), "detail": part.get("detail", "auto")}
            )
    return item
