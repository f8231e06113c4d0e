"""What the session governor asks its shell to do.

The governor never performs an action itself. A shell executes the actions it gets, in
order; see docs/governor.md for the driving contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Json = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Forward:
    """Forward the original message, byte for byte, to its destination."""


@dataclass(frozen=True, slots=True)
class ForwardRewritten:
    """Forward `event` (re-serialised) instead of the original message."""

    event: Json


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Send a GA server event (usually an `error`) to the client."""

    event: Json


@dataclass(frozen=True, slots=True)
class SendToUpstream:
    """Send a client event (e.g. `response.cancel`) to the upstream session."""

    event: Json


@dataclass(frozen=True, slots=True)
class CloseSession:
    """Close both sides. `code`/`reason` go to the client; `end_reason` to the session row."""

    code: int
    reason: str
    end_reason: str


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One priced upstream response: becomes exactly one ledger row."""

    response_id: str
    session_id: str
    tenant_id: str
    model: str
    status: str
    occurred_at: float
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_text_tokens: int
    input_audio_tokens: int
    input_image_tokens: int
    cached_text_tokens: int
    cached_audio_tokens: int
    cached_image_tokens: int
    output_text_tokens: int
    output_audio_tokens: int
    cost_micro_usd: int
    price_version: str


@dataclass(frozen=True, slots=True)
class TranscriptionRecord:
    """Input-audio transcription usage, billed at the ASR model's rates."""

    session_id: str
    tenant_id: str
    item_id: str
    content_index: int
    model: str
    occurred_at: float
    usage_type: Literal["tokens", "duration"]
    input_text_tokens: int
    input_audio_tokens: int
    output_tokens: int
    duration_ms: int
    cost_micro_usd: int
    price_version: str
    estimated: bool = False  # the backstop: appended audio no completed transcription billed


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str
    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class RateLimitsRecord:
    """An upstream `rate_limits.updated`, as observed in one session."""

    session_id: str
    tenant_id: str
    observed_at: float
    limits: tuple[RateLimit, ...]


@dataclass(frozen=True, slots=True)
class SessionInfoRecord:
    """The effective session config upstream reported (model, voice, its session id)."""

    session_id: str
    model: str | None
    voice: str | None
    upstream_session_id: str | None


Record = UsageRecord | TranscriptionRecord | RateLimitsRecord | SessionInfoRecord


@dataclass(frozen=True, slots=True)
class Persist:
    """Write `record` to the ledger (durably, off the hot path)."""

    record: Record


@dataclass(frozen=True, slots=True)
class ReserveBudget:
    """Reserve `amount_micro_usd` against the tenant's shared budget, then answer with
    `governor.on_reservation(reservation_id, granted, now)`.

    `forced` marks a response that already started upstream (server VAD): record the
    reservation even if it does not fit (`policies.budget.force_reserve`) and answer
    whether it fitted. Otherwise reserve only if it fits (`try_reserve`).
    """

    reservation_id: str
    amount_micro_usd: int
    forced: bool = False


@dataclass(frozen=True, slots=True)
class SettleBudget:
    """Replace a reservation by the real cost (`policies.budget.settle`), exactly once.

    `reservation_id` is None for spend that had no reservation (reserved is then 0).
    """

    reservation_id: str | None
    reserved_micro_usd: int
    actual_micro_usd: int


@dataclass(frozen=True, slots=True)
class RecordSpend:
    """Add spend that had no reservation (an input transcription) to the tenant's shared budget.

    `spend_id` makes it count once, however often it is executed.
    """

    spend_id: str
    amount_micro_usd: int


@dataclass(frozen=True, slots=True)
class NoteHeadroom:
    """Share the org's upstream token headroom (a `rate_limits.updated`) with admission."""

    record: RateLimitsRecord


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A policy decision worth an audit row (budget cut, cap close, re-clamp)."""

    kind: str
    session_id: str
    tenant_id: str
    occurred_at: float
    detail: Json


Action = (
    Forward
    | ForwardRewritten
    | SendToClient
    | SendToUpstream
    | CloseSession
    | Persist
    | ReserveBudget
    | SettleBudget
    | RecordSpend
    | NoteHeadroom
    | AuditEvent
)
# The actions a shell executes against the shared live state, in order, off the frame path.
SharedAction = ReserveBudget | SettleBudget | RecordSpend | NoteHeadroom

FORWARD: Final = Forward()
FORWARD_ONLY: Final[tuple[Action, ...]] = (FORWARD,)
NOTHING: Final[tuple[Action, ...]] = ()


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """The `error` object of a GA `error` event, OpenAI-shaped."""

    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    event_id: str | None = None


def error_event(detail: ErrorDetail, event_id: str) -> dict[str, Any]:
    """Build a GA `error` server event, as the official SDKs parse it."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": detail.type,
            "code": detail.code,
            "message": detail.message,
            "param": detail.param,
            "event_id": detail.event_id,
        },
    }
