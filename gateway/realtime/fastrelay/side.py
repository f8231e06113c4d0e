"""One end of the splice: its transport, what is half-read from it, its holds and its close state."""

from __future__ import annotations

import asyncio


class Side:
    """One end of the splice (the client's or upstream's socket)."""

    def __init__(self, name: str, transport: asyncio.Transport, masked: bool, max_message: int) -> None:
        self.name = name
        self.transport = transport
        self.masked = masked  # frames *from* this side are masked (it is the client side)
        self.max_message = max_message
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.need = 0
        self.skip = 0  # bytes of a refused oversized frame still to discard
        # A fragmented message being reassembled: its original frames and unmasked payload.
        self.frag_frames: list[bytes] | None = None
        self.frag_payload: list[bytes] = []
        self.frag_len = 0
        self.frag_binary = False
        self.close_sent = False
        self.close_received = False
        self.lost = False
        self.paused_by_peer = False
        self.held = False  # not read while a message from it waits (for the ledger, or the opening)
        # Reads that arrive while held (one under way when reading paused) wait here, in order.
        self.diverting = False
        self.backlog: list[bytes] = []
        # While gated, what is written toward this side waits here (the opening, docs/governor.md).
        self.queue: list[bytes] | None = None
        self.queued_bytes = 0
        # Nothing is half-read from this side and the session is not ending: its reads may
        # take the relay's fast path. Cleared by `_end`; recomputed after each `_feed`.
        self.fast = True

    def write(self, data: bytes) -> None:
        if self.lost or self.close_sent or not data:
            return
        if self.queue is not None:
            self.queue.append(data)
            self.queued_bytes += len(data)
        else:
            self.transport.write(data)

    def send_close(self, frame: bytes) -> None:
        if not self.lost and not self.close_sent:
            self.transport.write(frame)
        self.close_sent = True

    def gate(self) -> None:
        """Queue what is written toward this side until `ungate`."""
        if self.queue is None:
            self.queue, self.queued_bytes = [], 0

    def ungate(self, first: tuple[bytes, ...] = (), *, drop: bool = False) -> None:
        """Write `first`, then what was queued (unless `drop`), and write directly from now on."""
        queue, self.queue, self.queued_bytes = self.queue or [], None, 0
        for data in (*first, *(() if drop else queue)):
            self.write(data)

    def pause(self) -> None:
        if not self.paused_by_peer and not self.lost:
            self.paused_by_peer = True
            if not self.held:
                self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused_by_peer:
            self.paused_by_peer = False
            if not self.lost and not self.held:
                self.transport.resume_reading()

    def hold(self) -> None:
        """Stop reading this side; a read already under way goes to the backlog."""
        self.diverting = True
        if not self.held:
            self.held = True
            if not self.paused_by_peer and not self.lost:
                self.transport.pause_reading()

    def take_backlog(self) -> bytes:
        """Stop diverting reads and return what was diverted (reading stays paused until `unhold`)."""
        self.diverting = False
        backlog, self.backlog = self.backlog, []
        return b"".join(backlog)

    def unhold(self) -> None:
        self.diverting = False
        if self.held:
            self.held = False
            if not self.paused_by_peer and not self.lost:
                self.transport.resume_reading()
