"""The end-of-session fence: knowing when upstream has processed everything the client sent.

Upstream answers `input_audio_buffer.clear` (with `input_audio_buffer.cleared`, or an `error`
naming its `event_id`) only after everything sent before it. When the client's side ends,
the governor sends one more clear, the fence; once every clear in flight is answered, a
response server VAD started from earlier audio has been announced, and none can start later.
"""

from __future__ import annotations

from typing import Final

MAX_TRACKED_CLEARS: Final = 1024  # the client's clears awaiting an answer, remembered in order


class Fence:
    """The clears in flight (the client's and the fence), answered in the order they were sent."""

    __slots__ = ("_client_clear_ids", "_unanswered", "answered", "fence_id")

    def __init__(self) -> None:
        self.fence_id: str | None = None
        self.answered = False
        self._unanswered = 0  # clears sent upstream (the client's and the fence) not yet answered
        self._client_clear_ids: list[str | None] = []  # the client's clears in flight, oldest first

    @property
    def waiting(self) -> bool:
        """The fence is up and upstream has not answered it yet."""
        return self.fence_id is not None and not self.answered

    def client_clear(self, event_id: object) -> None:
        """The client sent a clear: its answer comes before the fence's."""
        self._unanswered += 1
        if len(self._client_clear_ids) < MAX_TRACKED_CLEARS:
            self._client_clear_ids.append(event_id if isinstance(event_id, str) else None)

    def raise_fence(self, event_id: str) -> None:
        self.fence_id = event_id
        self._unanswered += 1

    def cleared(self) -> None:
        """An `input_audio_buffer.cleared`: the oldest clear in flight is the one answered."""
        if self._client_clear_ids:
            self._client_clear_ids.pop(0)
        self._answered_one()

    def refused(self, event_id: object) -> None:
        """An upstream `error` naming `event_id`: a refused clear is answered too."""
        if self.fence_id is not None and event_id == self.fence_id:
            self.answered = True  # refused, but answered: everything before it was processed
        elif isinstance(event_id, str) and event_id in self._client_clear_ids:
            self._client_clear_ids.remove(event_id)
            self._answered_one()

    def _answered_one(self) -> None:
        # Upstream answers clears in the order they were sent: the fence is answered with the last one.
        self._unanswered = max(0, self._unanswered - 1)
        if self.fence_id is not None and self._unanswered == 0:
            self.answered = True
