"""Keeping the upstream session under the policy's `max_output_tokens` ceiling.

Responses started by server VAD read the session's own `max_output_tokens`, so the session
itself must carry the ceiling: at `session.created` (and whenever upstream reports a larger
or `"inf"` value) the governor sends a `session.update` of its own; until upstream carries
it, a client `session.update` without a value gets one inserted (`policies.clamp`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.clamp import BETA_TOKENS, GA_TOKENS
from policies.metering import as_int


def token_value(value: object) -> int | None:
    """A max_output_tokens value as an int, or None for "inf", unset or garbage."""
    number = as_int(value)
    return number if number is not None and number >= 1 else None


class SessionCeiling:
    """What the upstream session carries, and the `session` body that would bring it under the ceiling."""

    __slots__ = ("clamped", "session_type", "tokens")

    def __init__(self) -> None:
        self.session_type = "realtime"
        self.tokens: int | None = None  # the session's max_output_tokens (None = "inf")
        self.clamped = False  # upstream is known to carry the policy ceiling

    def observe(self, session: Mapping[str, Any], ceiling: int | None) -> dict[str, Any] | None:
        """Upstream reported its session: the update body that clamps it, or None if it needs none."""
        kind = session.get("type")
        if isinstance(kind, str):
            self.session_type = kind
        beta = "type" not in session
        for name in (GA_TOKENS, BETA_TOKENS):
            if name in session:
                self.tokens = token_value(session[name])
        if ceiling is None or self.session_type != "realtime":
            return None
        self.clamped = True
        if self.tokens is not None and self.tokens <= ceiling:
            return None
        self.tokens = ceiling
        return {BETA_TOKENS: ceiling} if beta else {"type": "realtime", GA_TOKENS: ceiling}

    def client_update(self, session_update: Mapping[str, Any], ceiling: int | None) -> None:
        """A client `session.update` on its way upstream (already policed)."""
        session = session_update.get("session")
        if not isinstance(session, Mapping):
            return
        for name in (GA_TOKENS, BETA_TOKENS):
            if name in session:
                self.tokens = token_value(session[name])
                self.clamped = ceiling is not None and self.tokens is not None

    def lowered(self, ceiling: int | None) -> bool:
        """The policy's ceiling changed: True if the live session must be re-clamped to it."""
        if ceiling is None or self.session_type != "realtime":
            return False
        if self.tokens is not None and self.tokens <= ceiling:
            return False
        self.tokens = ceiling
        return True
