"""Validating what the emulator sends on the GPT-Live and translation surfaces against the SDK.

Tagged unions (`Field(discriminator="type")`) so a wrong `type` fails loudly, and an
undeclared-key check: the SDK models allow extra keys, so validation alone would not
catch a key the real server never sends. A `response.event`'s nested event is validated
against `openai.types.responses.ResponseStreamEvent` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from openai.types.live import ConnectServerEvent, ForkServerEvent, ServerEvent
from openai.types.realtime import RealtimeTranslationServerEvent
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, Field, TypeAdapter

from emulator import RealtimeEmulator

EXAMPLES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "fixtures" / "live-examples.json").read_text()
)
PRIMARY: TypeAdapter[Any] = TypeAdapter(Annotated[ServerEvent, Field(discriminator="type")])
SIDEBAND: TypeAdapter[Any] = TypeAdapter(Annotated[ConnectServerEvent, Field(discriminator="type")])
FORK: TypeAdapter[Any] = TypeAdapter(Annotated[ForkServerEvent, Field(discriminator="type")])
NESTED: TypeAdapter[Any] = TypeAdapter(Annotated[ResponseStreamEvent, Field(discriminator="type")])
TRANSLATION: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeTranslationServerEvent, Field(discriminator="type")])


def undeclared(value: Any, path: str = "") -> list[str]:
    """Paths of keys a validated model holds that its SDK type does not declare."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{key}" for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += undeclared(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += undeclared(item, f"{path}[{index}]")
    return found


def check(adapter: TypeAdapter[Any], event: dict[str, Any]) -> None:
    model = adapter.validate_python(event)
    extra = undeclared(model, event["type"])
    assert not extra, f"undeclared keys {extra} in {event}"
    if event["type"] == "response.event":
        nested = NESTED.validate_python(event["event"])
        extra = undeclared(nested, "response.event.event")
        assert not extra, f"undeclared keys {extra} in {event}"


def validate_live(emulator: RealtimeEmulator) -> set[str]:
    """Validate every event every Live session sent (primary, fork, sidebands); return the types."""
    seen: set[str] = set()
    for session in emulator.live.sessions:
        adapter = FORK if session.forked_from and session.protocol.transport == "websocket" else PRIMARY
        for event in session.server_events:
            check(adapter, event)
            seen.add(event["type"])
        for sideband in session.sidebands + session.detached:
            for event in sideband.server_events:
                check(SIDEBAND, event)
                seen.add(event["type"])
    return seen


def validate_translation(emulator: RealtimeEmulator) -> set[str]:
    seen: set[str] = set()
    for session in emulator.translations.sessions:
        for event in session.server_events:
            check(TRANSLATION, event)
            seen.add(event["type"])
    return seen
