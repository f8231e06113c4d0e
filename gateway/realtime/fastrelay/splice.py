"""The splice core: per-frame decisions between two sockets, and the holds that keep order.

Frames move verbatim between the two sides; only messages that need it are reassembled
(and unmasked) and handed to the `LiveSession`, whose `Verdict` says what to send where.
Two holds keep what the client sees in order:

- **billing**: an upstream message whose usage must be durable first (`Verdict.durable`, a
  `response.done`) is held, with everything upstream sends after it, until the ledger has it;
- **opening**: while `LiveSession.opening` (voxgate's own `session.update` is not confirmed
  yet), the client is not read (its reads wait, in order, behind voxgate's update) and what
  goes to the client is queued behind the `session.created` the governor will release.

`Splice` knows frames and verdicts, not how a session ends: `FastRelay` (relay.py) supplies
the ending hooks (`_close_frame`, `_protocol_error`, `_too_big`, `_failed`, `_act_close`).
"""

from __future__ import annotations

import asyncio

from gateway.realtime.fastrelay.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_TEXT,
    FrameHeader,
    ProtocolError,
    apply_mask,
    build_frame,
    parse_header,
    payload_of,
)
from gateway.realtime.fastrelay.side import Side
from gateway.session.live import PASS, LiveSession, Verdict
from policies.actions import CloseSession

UPSTREAM_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# What each fragment of a message counts toward its size limit beyond its payload: what keeping it
# costs (two objects, its frame and its unmasked payload), so empty or one-byte continuation frames
# cannot hold memory the limit does not see.
FRAGMENT_OVERHEAD_BYTES = 512
# What upstream may send toward the client before the opening ends (it is queued meanwhile).
OPENING_QUEUE_BYTES = 1024 * 1024


class Splice:
    """The two sides of one session and the per-frame work between them."""

    def __init__(
        self, live: LiveSession, client: asyncio.Transport, upstream: asyncio.Transport, max_message_bytes: int
    ) -> None:
        self.live = live
        self.client = Side("client", client, masked=True, max_message=max_message_bytes)
        self.upstream = Side("upstream", upstream, masked=False, max_message=UPSTREAM_MAX_MESSAGE_BYTES)
        self.ending = False
        self.abandoning = False  # ending, but still reading upstream for the usage of responses in flight
        self.opening = False
        self._hold: tuple[Verdict, bytes] | None = None  # an upstream message waiting for the ledger
        self._gated = False  # the client is not read: a `session.update` waits for its model to be counted
        # The fast paths' calls, bound once (they run for nearly every frame).
        self._to_upstream = upstream.write
        self._to_client = client.write
        self._client_audio = live.client_audio
        self._upstream_content = live.upstream_content

    def _begin_opening(self) -> None:
        """Hold the client's side until the governor's own configuration is confirmed upstream."""
        if self.live.opening:
            self.opening = True
            self.client.hold()
            self.client.gate()
            self.client.fast = self.upstream.fast = False

    # The fast paths: while nothing is half-read, each whole, final, text frame (under
    # 64 KiB) at the front of `data` that `LiveSession` lets through uninspected (audio
    # appends one way, content deltas the other) is forwarded, all of them in one write.
    # The rest of `data`, from the first frame that is anything else, goes to `_feed`.
    def client_data(self, data: bytes) -> None:
        side = self.client
        if not side.fast:
            self._guarded(side, data)
            return
        n = len(data)
        if n > 8 and data[0] == 0x81 and data[1] == 0xFE and (data[2] << 8 | data[3]) == n - 8:
            # The commonest read of all: one whole masked audio append (126-32767 bytes).
            try:
                passed = n - 8 <= side.max_message and self._client_audio(apply_mask(data[8:], data[4:8]))
            except Exception as exc:
                self._failed(exc)
                return
            if passed:
                self._to_upstream(data)
            else:
                self._guarded(side, data)
            return
        pos = 0
        audio = self._client_audio
        limit = side.max_message
        try:
            while pos + 8 <= n and data[pos] == 0x81:
                b1 = data[pos + 1]
                if b1 == 0xFE:  # masked, 16-bit length
                    head = pos + 8
                    end = head + (data[pos + 2] << 8 | data[pos + 3])
                elif 0x80 <= b1 < 0xFE:  # masked, 7-bit length
                    head = pos + 6
                    end = head + (b1 & 0x7F)
                else:
                    break
                if end > n or end - head > limit or not audio(apply_mask(data[head:end], data[head - 4 : head])):
                    break
                pos = end
        except Exception as exc:
            self._failed(exc)
            return
        if pos == n:
            self._to_upstream(data)
        else:
            self._feed_rest(side, self.upstream, data, pos)

    def upstream_data(self, data: bytes) -> None:
        side = self.upstream
        if not side.fast:
            self._guarded(side, data)
            return
        n = len(data)
        if n > 4 and data[0] == 0x81 and data[1] == 126 and (data[2] << 8 | data[3]) == n - 4:
            # The commonest read of all: one whole content delta (126-65535 bytes).
            try:
                passed = self._upstream_content(data, 4, n)
            except Exception as exc:
                self._failed(exc)
                return
            if passed:
                self._to_client(data)
            else:
                self._guarded(side, data)
            return
        pos = 0
        content = self._upstream_content
        try:
            while pos + 4 <= n and data[pos] == 0x81:
                b1 = data[pos + 1]
                if b1 == 126:  # 16-bit length
                    head = pos + 4
                    end = head + (data[pos + 2] << 8 | data[pos + 3])
                elif b1 < 126:
                    head = pos + 2
                    end = head + b1
                else:
                    break
                if end > n or not content(data, head, end):
                    break
                pos = end
        except Exception as exc:
            self._failed(exc)
            return
        if pos == n:
            self._to_client(data)
        else:
            self._feed_rest(side, self.client, data, pos)

    def _feed_rest(self, side: Side, other: Side, data: bytes, pos: int) -> None:
        """Forward the `pos` bytes the fast path passed, and give `_feed` the rest."""
        if pos:
            other.transport.write(data[:pos])
            data = data[pos:]
        self._guarded(side, data)

    def _other(self, side: Side) -> Side:
        return self.upstream if side is self.client else self.client

    def _guarded(self, side: Side, data: bytes) -> None:
        try:
            self._feed(side, data)
        except ProtocolError as exc:
            self._protocol_error(side, str(exc))
        except Exception as exc:  # a bug in voxgate must still end the session cleanly
            self._failed(exc)
        self._refresh_fast(side)
        self._after_feed(side)

    def _refresh_fast(self, side: Side) -> None:
        side.fast = not (
            self.ending or self.opening or side.pending or side.skip or side.frag_frames is not None or side.held
        )

    def _reading(self, side: Side) -> bool:
        """Data frames from `side` still matter: the session is live, or upstream is being
        read for the usage of abandoned responses."""
        return not self.ending or (self.abandoning and side is self.upstream)

    def _feed(self, side: Side, data: bytes) -> None:
        if side.lost or side.close_received:
            return
        if side.diverting:  # a read that was under way when reading paused
            side.backlog.append(data)
            return
        if side.skip:
            if len(data) <= side.skip:
                side.skip -= len(data)
                return
            data, side.skip = data[side.skip :], 0
        if side.pending:
            side.pending.append(data)
            side.pending_len += len(data)
            if side.pending_len < side.need:
                return
            buf = b"".join(side.pending)
            side.pending.clear()
            side.pending_len = 0
        else:
            buf = data
        n = len(buf)
        pos = 0
        run = 0  # start of frames that go on verbatim in one write
        other = self._other(side)
        need = 0
        while pos < n:
            header = parse_header(buf, pos, expect_masked=side.masked)
            if isinstance(header, int):
                need = header
                break
            opcode = header.opcode
            end = header.payload_end
            if opcode < OP_CLOSE:
                too_big = header.length + (side.frag_len if opcode == OP_CONTINUATION else 0) > side.max_message
                reading = self._reading(side)
                if not reading or too_big:  # dropped without buffering it
                    other.write(buf[run:pos])
                    if reading:
                        self._too_big(side)
                    side.skip = max(0, end - n)
                    pos = run = min(end, n)
                    continue
            if end > n:
                need = end - pos
                break
            if not self._reading(side):  # only a close reply still matters
                if opcode == OP_CLOSE:
                    self._close_frame(side, buf, header, pos)
                    return
                pos = run = end
                continue
            if opcode > OP_CLOSE:  # ping and pong ride along verbatim
                pos = end
                continue
            if opcode == OP_CLOSE:
                other.write(buf[run:pos])
                self._close_frame(side, buf, header, pos)
                return
            if opcode == OP_CONTINUATION or not header.fin or side.frag_frames is not None:
                other.write(buf[run:pos])
                self._fragment(side, buf, header, pos)
                pos = run = end
                if side.diverting:
                    self._keep_for_later(side, buf, end)
                    return
                continue
            verdict = self._inspect(side, payload_of(buf, header), opcode == OP_BINARY)
            # Passed on verbatim with the frames around it, unless the opening is on: the message that
            # ends it (a `session.created` needing no clamp, as a transcription session's) must reach
            # `_execute`, which ends the opening, even when the governor only forwards it.
            if not self.opening and (
                verdict is PASS
                or (
                    verdict.forward
                    and not (verdict.to_client or verdict.to_upstream or verdict.close or verdict.durable)
                )
            ):
                pos = end
                continue
            other.write(buf[run:pos])
            self._carry_out(side, verdict, buf[pos:end], other)
            pos = run = end
            if side.diverting:  # this message waits for the ledger
                self._keep_for_later(side, buf, end)
                return
            if not self._reading(side):
                return
        if run == 0 and pos == n:
            other.write(buf)
        else:
            other.write(buf[run:pos])
        if pos < n:
            side.pending.append(buf[pos:])
            side.pending_len = n - pos
            side.need = need

    @staticmethod
    def _keep_for_later(side: Side, buf: bytes, end: int) -> None:
        """What followed a held message in this read waits with it (reading is paused)."""
        if end < len(buf):
            side.backlog.append(buf[end:])

    def _fragment(self, side: Side, buf: bytes, header: FrameHeader, pos: int) -> None:
        if header.opcode == OP_CONTINUATION:
            if side.frag_frames is None:
                raise ProtocolError("continuation frame without a message to continue")
        else:
            if side.frag_frames is not None:
                raise ProtocolError("new message before the fragmented one finished")
            side.frag_frames, side.frag_payload, side.frag_len = [], [], 0
            side.frag_binary = header.opcode == OP_BINARY
        side.frag_frames.append(buf[pos : header.payload_end])
        side.frag_payload.append(payload_of(buf, header))
        side.frag_len += header.length + FRAGMENT_OVERHEAD_BYTES
        if not header.fin:
            return
        frames, payload, binary = side.frag_frames, b"".join(side.frag_payload), side.frag_binary
        side.frag_frames, side.frag_payload, side.frag_len = None, [], 0
        self._carry_out(side, self._inspect(side, payload, binary), b"".join(frames), self._other(side))

    def _inspect(self, side: Side, payload: bytes, binary: bool) -> Verdict:
        if side is self.client:
            return self.live.from_client(payload, binary=binary)
        return self.live.from_upstream(payload, binary=binary)

    def _carry_out(self, side: Side, verdict: Verdict, original: bytes, other: Side) -> None:
        """Execute `verdict`, or hold it (and upstream) until its billed record is durable."""
        if side is self.client and self.live.holding_client:
            # Behind a `session.update` whose model is being counted (gateway.session.model_gate), the
            # client is not read: what it sends meanwhile waits in its socket, not in voxgate's memory.
            self._execute(verdict, original, other)
            if not self._gated:
                self._gated = True
                side.hold()
            return
        durable = verdict.durable
        if durable is None or durable.done() or side is not self.upstream or self.ending:
            self._execute(verdict, original, other)
            return
        self._hold = (verdict, original)
        side.hold()
        durable.add_done_callback(self._durable_done)

    def _durable_done(self, durable: asyncio.Future[None]) -> None:
        """The held message's usage is durable: send it, then what upstream sent after it."""
        hold = self._hold
        if hold is None or hold[0].durable is not durable:
            return  # the session ended meanwhile; `_end` released the hold
        self._hold = None
        side = self.upstream  # not read until what was read after the message is fed
        rest = side.take_backlog()
        try:
            self._execute(hold[0], hold[1], self.client)
        except Exception as exc:
            self._failed(exc)
            return
        if rest:
            self._guarded(side, rest)  # may hold again at the next response.done
        if self._hold is None:
            side.unhold()
            self._refresh_fast(side)
            self._hold_released()

    def _gate_released(self) -> None:
        """After a late verdict: if it was the held update's (its model counted), read the client again,
        what was read after the update first."""
        if not self._gated or self.live.holding_client or self.ending:
            return
        self._gated = False
        side = self.client
        rest = side.take_backlog()
        if rest:
            self._guarded(side, rest)  # may hold again, behind another update
        if not self._gated and not self.ending:
            side.unhold()
            self._refresh_fast(side)

    def _take_hold(self) -> tuple[Verdict, bytes] | None:
        hold, self._hold = self._hold, None
        return hold

    def _release_hold(self, hold: tuple[Verdict, bytes] | None) -> None:
        """The session ends: a held message goes out at once (the client is gone or closing)."""
        rest = self.upstream.take_backlog()
        if hold is not None:
            self._execute(hold[0], hold[1], self.client)
        if rest:
            self._guarded(self.upstream, rest)

    def _execute(self, verdict: Verdict, original: bytes, other: Side) -> None:
        if verdict.forward:
            other.write(original)
        for message in verdict.to_upstream:
            self.upstream.write(build_frame(OP_TEXT, message.encode(), masked=True))
        to_client = tuple(build_frame(OP_TEXT, message.encode(), masked=False) for message in verdict.to_client)
        if self.opening and not self.live.opening:
            self._end_opening(to_client, verdict.close)
        else:
            for frame in to_client:
                self.client.write(frame)
        if verdict.close is not None:
            self._act_close(verdict.close)

    def _end_opening(self, first: tuple[bytes, ...], close: CloseSession | None) -> None:
        """The governor's configuration is confirmed: `first` (the held `session.created`) goes to the
        client ahead of what upstream sent meanwhile, then the client's waiting messages go upstream.
        A close (no confirmation in time) drops what was queued: the client gets its `error` and close."""
        self.opening = False
        self.client.ungate(first, drop=close is not None)
        if close is None and not self.ending:
            backlog = self.client.take_backlog()
            self.client.unhold()
            self._refresh_fast(self.upstream)
            if backlog:
                self._guarded(self.client, backlog)
            self._refresh_fast(self.client)

    def _check_opening(self) -> bool:
        """Upstream may send only so much before it confirms the session; True if that was exceeded."""
        return self.opening and self.client.queued_bytes > OPENING_QUEUE_BYTES

    # Hooks the relay implements (how a session ends).
    def _after_feed(self, side: Side) -> None:
        raise NotImplementedError

    def _hold_released(self) -> None:
        raise NotImplementedError

    def _act_close(self, close: CloseSession) -> None:
        raise NotImplementedError

    def _failed(self, exc: Exception) -> None:
        raise NotImplementedError

    def _close_frame(self, side: Side, buf: bytes, header: FrameHeader, pos: int) -> None:
        raise NotImplementedError

    def _protocol_error(self, side: Side, detail: str) -> None:
        raise NotImplementedError

    def _too_big(self, side: Side) -> None:
        raise NotImplementedError
