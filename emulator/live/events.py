"""The GPT-Live event vocabulary: which client events each socket takes, which server
events the emulator sends, and the Live `error` event."""

from __future__ import annotations

from typing import Any

from emulator.errors import ProtocolError
from emulator.live.voice import event

PRIMARY_EVENTS = frozenset(
    {
        "session.start",
        "session.update",
        "session.input_audio.append",
        "session.input_audio.mute",
        "session.input_audio.unmute",
        "session.output_audio.fixture.play",
        "session.instructions.append",
        "session.thinking.append",
        "session.commentary.append",
        "decision.create",
        "decision.item.create",
        "decision.item.delete",
        "response.item.create",
        "response.create",
        "session.close",
    }
)
# Every server event type the emulator can send (tests/test_emulator_live_conformance.py covers each).
LIVE_SERVER_EVENTS = frozenset(
    {
        "session.started",
        "session.updated",
        "session.input_transcript.delta",
        "session.output_transcript.delta",
        "session.output_audio.delta",
        "session.input_audio.append",
        "session.delegation.created",
        "response.event",
        "decision.event",
        "decision.item.created",
        "decision.item.deleted",
        "session.usage.updated",
        "session.closed",
        "session.instructions.appended",
        "session.thinking.appended",
        "session.commentary.appended",
        "session.input_audio.muted",
        "session.input_audio.unmuted",
        "session.output_audio.fixture.playing",
        "session.output_audio.fixture.played",
        "session.paused",
        "session.resumed",
        "error",
        "info",
        "transport.ringing",
        "transport.answered",
        "transport.dtmf.sent",
    }
)
SIDEBAND_EVENTS = (PRIMARY_EVENTS - {"session.start", "session.input_audio.append"}) | {"transport.dtmf.send"}


def live_error(exc: ProtocolError, client_event_id: str | None) -> dict[str, Any]:
    """A Live `error` event: `code` is always a string, the client's event id echoed twice."""
    error: dict[str, Any] = {"type": exc.type, "code": exc.code or exc.type, "message": exc.message}
    if exc.param is not None:
        error["param"] = exc.param
    if client_event_id is not None:
        error["client_event_id"] = client_event_id
        return {**event("error", error=error), "client_event_id": client_event_id}
    return event("error", error=error)
