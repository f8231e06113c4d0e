"""The close-reason table: how a session's end shows on the client's socket, in the ledger and in metrics.

docs/close-codes.md is the contract; every transport ends a session through one of these
entries (the policy closes come from the governor as `CloseSession`, with the same fields).
The ledger's `end_reason` is also the `voxgate_sessions_ended_total` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from policies.caps import CLOSE_BAD_GATEWAY, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_TOO_BIG

CLOSE_PROTOCOL_ERROR: Final = 1002


@dataclass(frozen=True, slots=True)
class Ending:
    """One row of docs/close-codes.md: the close the client gets (None: the client's own) and the row's reason."""

    end_reason: str
    code: int | None
    reason: str = ""


# The client's side ended it: its code, echoed.
CLIENT_CLOSED: Final = Ending("client_closed", None)
CLIENT_LOST: Final = Ending("client_closed", None, "client connection lost")
CLIENT_PROTOCOL_ERROR: Final = Ending("client_closed", CLOSE_PROTOCOL_ERROR)
CLIENT_TOO_BIG: Final = Ending("client_closed", CLOSE_TOO_BIG)
# Upstream's side ended it.
UPSTREAM_LOST: Final = Ending("upstream_error", CLOSE_BAD_GATEWAY, "upstream connection lost")
UPSTREAM_PROTOCOL_ERROR: Final = Ending("upstream_error", CLOSE_BAD_GATEWAY, "upstream protocol error")
UPSTREAM_TOO_BIG: Final = Ending("upstream_error", CLOSE_BAD_GATEWAY, "upstream message too big")
# voxgate ended it.
GATEWAY_ERROR: Final = Ending("gateway_error", CLOSE_INTERNAL_ERROR, "gateway error")
GATEWAY_SHUTDOWN: Final = Ending("gateway_shutdown", CLOSE_GOING_AWAY, "gateway shutting down")
# WebRTC calls: no client socket, only the row's reason.
CALL_ENDED: Final = Ending("call_ended", None)
CALL_HUNG_UP: Final = Ending("client_hangup", None)
SIDEBAND_LOST: Final = Ending("upstream_error", None, "sideband connection lost")


def upstream_close_reason(code: int | None) -> str:
    """The row's reason when upstream closed with `code`: clean, or an error."""
    return "upstream_closed" if code in (None, CLOSE_NORMAL, CLOSE_GOING_AWAY) else "upstream_error"


def ledger_end_reason(reason: str, *, expired: bool) -> str:
    """Upstream closing after its own `session_expired` error is an expiry, not a failure."""
    if expired and reason in ("upstream_closed", "upstream_error"):
        return "session_expired"
    return reason
