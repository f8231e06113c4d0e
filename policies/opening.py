"""The opening of a proxied session: `session.created` waits for voxgate's own configuration.

At `session.created` the governor asks upstream to carry the policy's ceiling (a
`session.update` of its own). The client must not see that exchange: the `session.created`
is held until upstream answers voxgate's update, then released once, carrying the
configuration upstream confirmed, and the `session.updated` that answered voxgate is
swallowed. The shell holds the client's messages meanwhile, so the first `session.updated`
after voxgate's update is its answer. Unconfirmed after `OPENING_TIMEOUT_S`: the session
closes (`policies.caps.OPENING_CAP`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

OPENING_TIMEOUT_S: Final = 5.0


@dataclass(slots=True)
class Opening:
    """The held `session.created` and the `event_id` of voxgate's update that must be answered first."""

    started_at: float | None
    created: dict[str, Any] | None = None
    update_id: str | None = None

    @property
    def deadline(self) -> float | None:
        return None if self.started_at is None else self.started_at + OPENING_TIMEOUT_S

    def expired(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now >= deadline

    def hold(self, created: Mapping[str, Any], update_id: str) -> None:
        self.created = dict(created)
        self.update_id = update_id

    def released(self, updated: Mapping[str, Any]) -> dict[str, Any]:
        """The one `session.created` the client gets: its own `event_id`, the confirmed session."""
        assert self.created is not None
        return {**self.created, "session": updated.get("session", self.created.get("session"))}
