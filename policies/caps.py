"""Why a session closes: the close codes and the caps the governor closes a session for.

Each cap says what the client is told (a GA `error`, then a close code) and what the session
row records; docs/close-codes.md is the table's documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Close codes a shell uses; documented in docs/close-codes.md.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BAD_GATEWAY = 1014
# Policy closes (docs/close-codes.md, "Policy closes").
CLOSE_DURATION_CAP = 4001
CLOSE_IDLE_TIMEOUT = 4002
CLOSE_BUDGET_EXHAUSTED = 4003
CLOSE_SESSION_TOKEN_CAP = 4004


@dataclass(frozen=True, slots=True)
class Cap:
    """Why a session is closing: what the client is told and what the row records."""

    code: int
    reason: str
    end_reason: str
    error_code: str
    message: str
    error_type: str = "invalid_request_error"


DURATION_CAP: Final = Cap(
    CLOSE_DURATION_CAP,
    "session duration limit reached",
    "duration_cap",
    "session_duration_exceeded",
    "The session reached its maximum duration.",
)
IDLE_CAP: Final = Cap(
    CLOSE_IDLE_TIMEOUT, "session idle timeout", "idle_timeout", "idle_timeout", "The session was idle for too long."
)
BUDGET_CAP: Final = Cap(
    CLOSE_BUDGET_EXHAUSTED,
    "budget exhausted",
    "budget_exhausted",
    "budget_exhausted",
    "This tenant's budget is exhausted.",
    "insufficient_quota",
)
TOKEN_CAP: Final = Cap(
    CLOSE_SESSION_TOKEN_CAP,
    "session token limit reached",
    "session_token_cap",
    "session_token_limit",
    "The session reached its token limit.",
)


OPENING_CAP: Final = Cap(
    CLOSE_BAD_GATEWAY,
    "upstream did not confirm the session",
    "upstream_error",
    "upstream_timeout",
    "Upstream did not confirm the session configuration in time.",
    "server_error",
)
