"""GPT-Live voice-time accounting: cumulative active and paused seconds from given instants.

Pure: the caller passes `now` (its clock's seconds). The rules (docs/emulator.md, "GPT-Live
usage"): a session is billed from its start; time while inference is paused (WebRTC idle
timeout) counts as paused, the rest as active; each is rounded down to whole seconds; a
WebRTC session has `prepaid_s` (15) billed from the create, so unused prepaid time counts
as active (`active_seconds` "includes any unused prepaid duration"); `seconds` is their sum.
"""

from __future__ import annotations

import math
from typing import Any


class VoiceMeter:
    """The usage of one Live session; `report(now)` is the cumulative `usage` object."""

    def __init__(self, started_at: float, *, prepaid_s: int = 0, breakdown: bool = False) -> None:
        self.started_at = started_at
        self.prepaid_s = prepaid_s
        self.breakdown = breakdown  # WebRTC reports active/paused seconds; WebSocket only `seconds`
        self.paused_since: float | None = None
        self._paused_total = 0.0
        self.ended_at: float | None = None

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def pause(self, now: float) -> None:
        if self.paused_since is None and self.ended_at is None:
            self.paused_since = now

    def resume(self, now: float) -> None:
        if self.paused_since is not None:
            self._paused_total += max(0.0, now - self.paused_since)
            self.paused_since = None

    def end(self, now: float) -> None:
        """Freeze the figures: later reports repeat the final usage."""
        if self.ended_at is None:
            self.resume(now)
            self.ended_at = now

    def seconds(self, now: float) -> tuple[int, int]:
        """(active, paused) whole seconds billed up to `now`."""
        at = self.ended_at if self.ended_at is not None else now
        paused_raw = self._paused_total + (max(0.0, at - self.paused_since) if self.paused_since is not None else 0.0)
        elapsed = max(0.0, at - self.started_at)
        paused = math.floor(paused_raw)
        active = math.floor(max(0.0, elapsed - paused_raw))
        active += max(0, self.prepaid_s - active - paused)
        return active, paused

    def report(self, now: float) -> dict[str, Any]:
        active, paused = self.seconds(now)
        usage: dict[str, Any] = {"seconds": float(active + paused)}
        if self.breakdown:
            usage["active_seconds"] = active
            usage["paused_seconds"] = paused
        return usage
