"""Policing a tenant's own sideband (`/v1/live/sessions/{id}/attach`): what its client events may do.

A tenant's backend attached to its session speaks the sideband's client events (the SDK's
`ConnectClientEvent` union). Its `session.update` can change the delegated backend, so it is
policed exactly like a `session.update` on the Live WebSocket (`police_update`): a refusal is
answered with an `error` and nothing is forwarded; a clamp forwards the re-serialised event.
An event outside the union (a `session.start`, an audio append, anything unknown) or a frame
that is not a JSON object is refused too: voxgate forwards only what it knows how to police.
`session.close` passes (voxgate's own sideband books the final usage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from policies.live.config import LiveRefusal, LiveRules, police_update

# The sideband's client events (`openai.types.live.ConnectClientEvent`, openai 3.57).
SIDEBAND_CLIENT_EVENTS: Final = frozenset(
    {
        "session.update",
        "session.input_audio.mute",
        "session.input_audio.unmute",
        "session.output_audio.fixture.play",
        "transport.dtmf.send",
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


@dataclass(frozen=True, slots=True)
class SidebandRewrite:
    """Forward `event` instead of the client's frame; `clamped` are the paths voxgate changed."""

    event: dict[str, Any]
    clamped: tuple[str, ...]


def police_sideband(event: object, rules: LiveRules) -> SidebandRewrite | LiveRefusal | None:
    """One decoded sideband client event (None: the frame was not JSON). None: forward it as it is."""
    if not isinstance(event, Mapping):
        return LiveRefusal("invalid_json", "A sideband event must be a JSON object.", "")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in SIDEBAND_CLIENT_EVENTS:
        return LiveRefusal(
            "invalid_value",
            f"Event type {kind!r} cannot be sent on a sideband through this gateway.",
            "type",
        )
    if kind != "session.update":
        return None
    policed = police_update(event.get("session"), rules)
    if isinstance(policed, LiveRefusal):
        return policed
    if not policed.clamped:
        return None
    return SidebandRewrite({**event, "session": policed.session}, policed.clamped)
