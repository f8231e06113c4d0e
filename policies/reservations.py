"""Budget reservations of one session: which response holds which reservation, settled once.

A client `response.create` is priced at its worst case and reserved before it goes upstream
(`Pending`, waiting for the shell's answer); once forwarded it waits for its
`response.created` (`awaiting_created`, in order), then belongs to that response until its
`response.done` settles it at the real cost. Server-started responses reserve after the fact
(`forced`). The book only tracks; the governor decides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.actions import SettleBudget


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    amount: int
    forced: bool = False
    event_id: str | None = None  # of the forwarded response.create, to match upstream errors


@dataclass(slots=True)
class Pending:
    """A client response.create held until the shell answers its reservation."""

    reservation: Reservation
    event: dict[str, Any]
    client_event_id: str | None
    since: float
    held: list[Mapping[str, Any]] = field(default_factory=list)


class ReservationBook:
    """The open reservations of one session."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._seq = 0
        self.pending: Pending | None = None
        self.awaiting_created: deque[Reservation] = deque()
        self.by_response: dict[str, Reservation] = {}
        self._settled_at_end: set[str] = set()  # responses whose reservation `settle_at_end` settled

    def new(self, amount: int, *, forced: bool = False, event_id: str | None = None) -> Reservation:
        self._seq += 1
        return Reservation(f"{self._session_id}:r{self._seq}", amount, forced, event_id)

    def created(self, response_id: str) -> bool:
        """A `response.created`: it takes the oldest forwarded reservation. False if there was none
        (server VAD started it)."""
        if not self.awaiting_created:
            return False
        self.by_response[response_id] = self.awaiting_created.popleft()
        return True

    def settle_done(self, response_id: str, cost: int) -> SettleBudget | None:
        """A metered `response.done`: its reservation (if any) becomes the real cost, once."""
        if response_id in self._settled_at_end:
            return None
        reservation = self.by_response.pop(response_id, None)
        if reservation is None and self.awaiting_created:
            reservation = self.awaiting_created.popleft()  # its response.created was never seen
        if reservation is None:
            return SettleBudget(None, 0, cost)
        return SettleBudget(reservation.reservation_id, reservation.amount, cost)

    def release_refused(self, event_id: str) -> SettleBudget | None:
        """Upstream refused the `response.create` with `event_id`: give its reservation back."""
        for reservation in self.awaiting_created:
            if reservation.event_id == event_id:
                self.awaiting_created.remove(reservation)
                return SettleBudget(reservation.reservation_id, reservation.amount, 0)
        return None

    def forced_response(self, reservation_id: str) -> str | None:
        """The response a forced (after-the-fact) reservation belongs to."""
        for response_id, reservation in self.by_response.items():
            if reservation.reservation_id == reservation_id and reservation.forced:
                return response_id
        return None

    def settle_at_end(self) -> list[SettleBudget]:
        """The session ends: whatever was never metered is settled at its worst case."""
        settles: list[SettleBudget] = []
        for response_id, reservation in sorted(self.by_response.items()):
            settles.append(SettleBudget(reservation.reservation_id, reservation.amount, reservation.amount))
            self._settled_at_end.add(response_id)
        for reservation in self.awaiting_created:
            settles.append(SettleBudget(reservation.reservation_id, reservation.amount, reservation.amount))
        self.by_response.clear()
        self.awaiting_created.clear()
        return settles
