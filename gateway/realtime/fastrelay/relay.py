"""The splice: frames move verbatim between two transports; only messages that need it are read.

`FastRelay` is the WebSocket transport shell around `LiveSession`; it owns
both sockets after the upgrade. For each direction it reads frame headers, forwards runs
of frames it need not change with one `write`, and reassembles (and unmasks) a message
only to hand it to the `LiveSession`. Control frames pass through; close frames end the
session with the reasons in docs/close-codes.md; each side's write buffer throttles
reading from the other. Everything here runs in transport callbacks: no task per frame.

Two rules keep billing whole (docs/relay.md, "Billing"): an upstream message whose usage
must be durable first (`Verdict.durable`, a `response.done`) is held, with everything
upstream sends after it, until the ledger has it; and a session that ends on the client's
side or voxgate's cancels what runs upstream, fences the input audio (so server VAD starts
nothing unseen) and keeps reading upstream, for at most `abandon_wait_seconds`, until the
fence is answered and every billed `response.done` has been metered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.realtime.fastrelay.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_TEXT,
    FrameHeader,
    ProtocolError,
    apply_mask,
    build_close,
    build_frame,
    parse_close,
    parse_header,
    payload_of,
)
from gateway.session.live import LiveSession, Verdict
from policies.governor import CLOSE_BAD_GATEWAY, CLOSE_INTERNAL_ERROR

log = logging.getLogger("voxgate.fastrelay")

TICK_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 2.0
# Per-transport write buffer: above HIGH the other side stops being read, below LOW it resumes.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
UPSTREAM_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009
ABANDON_WAIT_SECONDS = 5.0  # the default of VOXGATE_ABANDON_WAIT_SECONDS

# Who ended a session: the client's side (it left, closed, or broke the protocol), upstream's,
# or voxgate (a drain, a policy close). Only the first and last leave upstream to abandon.
CLIENT, UPSTREAM, GATEWAY, FAILURE = "client", "upstream", "gateway", "failure"


@dataclass(slots=True)
class _Hold:
    """An upstream message waiting for its usage to be durable, and what upstream sent after it."""

    verdict: Verdict
    original: bytes
    rest: list[bytes] = field(default_factory=list)


class Side:
    """One end of the splice: its transport, what is half-read from it, and its close state."""

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
        self.held = False  # not read while a message from it waits for the ledger
        # Nothing is half-read from this side and the session is not ending: its reads may
        # take the relay's fast path. Cleared by `_end`; recomputed after each `_feed`.
        self.fast = True

    def write(self, data: bytes) -> None:
        if not self.lost and not self.close_sent and data:
            self.transport.write(data)

    def send_close(self, frame: bytes) -> None:
        if not self.lost and not self.close_sent:
            self.transport.write(frame)
        self.close_sent = True

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
        if not self.held:
            self.held = True
            if not self.paused_by_peer and not self.lost:
                self.transport.pause_reading()

    def unhold(self) -> None:
        if self.held:
            self.held = False
            if not self.paused_by_peer and not self.lost:
                self.transport.resume_reading()


class FastRelay:
    """One proxied session: client transport <-> voxgate <-> upstream transport."""

    def __init__(
        self,
        live: LiveSession,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        max_message_bytes: int,
        on_done: Callable[[FastRelay], None],
        abandon_wait_seconds: float = ABANDON_WAIT_SECONDS,
    ) -> None:
        self.live = live
        self.client = Side("client", client, masked=True, max_message=max_message_bytes)
        self.upstream = Side("upstream", upstream, masked=False, max_message=UPSTREAM_MAX_MESSAGE_BYTES)
        self.ending = False
        # Ending, but still reading upstream for the `response.done` of responses in flight.
        self.abandoning = False
        self.abandon_wait_seconds = abandon_wait_seconds
        self._abandon_timer: asyncio.TimerHandle | None = None
        self._ending_as: tuple[str, str | None] | None = None  # the end to record once abandoning is over
        self._upstream_close: bytes | None = None  # the close frame upstream gets once abandoning is over
        self._hold: _Hold | None = None
        self._deferred_end: tuple[str, str | None, bytes | None, bytes | None, str] | None = None
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._tick: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._finishing: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        # The fast paths' calls, bound once (they run for nearly every frame).
        self._to_upstream = upstream.write
        self._to_client = client.write
        self._client_audio = live.client_audio
        self._upstream_content = live.upstream_content

    def start(self) -> None:
        for side in (self.client, self.upstream):
            side.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
            # asyncio sets TCP_NODELAY only on sockets created with proto=IPPROTO_TCP, which
            # uvicorn's accepted ones are not: without this, Nagle holds a lone small frame
            # (a response.done released by the ledger, an error) for the client's delayed ACK.
            sock = side.transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tick = self._loop.call_later(TICK_SECONDS, self._on_tick)
        self.live.attach(self._deliver)

    async def _deliver(self, verdict: Verdict) -> None:
        """Verdicts that arrive between frames (budget reservations, policy broadcasts)."""
        if not self.ending:
            self._execute(verdict, b"", self.upstream)
            self._schedule_tick()

    def _schedule_tick(self) -> None:
        """Tick once a second, or sooner when the governor has a deadline (a close after a cut)."""
        if self.ending:
            return
        delay = TICK_SECONDS
        due = self.live.next_deadline_in()
        if due is not None and due < delay:
            delay = max(due, 0.005) + 0.001  # just past it: the governor acts at `now >= deadline`
        when = self._loop.time() + delay
        if self._tick is not None:
            if self._tick.when() <= when:
                return
            self._tick.cancel()
        self._tick = self._loop.call_at(when, self._on_tick)

    # Drainable (services.live)
    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        """End the session from outside (drain): `code` to the client, 1000 upstream."""
        self._end(end_reason, None, build_close(code, reason, masked=False), build_close(1000, masked=True), GATEWAY)

    # Events from the two protocols
    #
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

    def client_lost(self, exc: Exception | None) -> None:
        self._lost(self.client)

    def upstream_lost(self, exc: Exception | None) -> None:
        self._lost(self.upstream)

    def client_pause_writing(self) -> None:
        self.upstream.pause()

    def client_resume_writing(self) -> None:
        self.upstream.resume()

    def upstream_pause_writing(self) -> None:
        self.client.pause()

    def upstream_resume_writing(self) -> None:
        self.client.resume()

    # The splice
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
        if self.abandoning and not self.live.awaiting_upstream:
            self._finish_abandon(None)

    def _refresh_fast(self, side: Side) -> None:
        side.fast = not (self.ending or side.pending or side.skip or side.frag_frames is not None or side.held)

    def _failed(self, exc: Exception) -> None:
        log.exception("fast relay failed for session %s", self.live.session_id, exc_info=exc)
        self._end(
            "gateway_error",
            type(exc).__name__,
            build_close(CLOSE_INTERNAL_ERROR, "gateway error", masked=False),
            build_close(1000, masked=True),
            FAILURE,
        )

    def _reading(self, side: Side) -> bool:
        """Data frames from `side` still matter: the session is live, or upstream is being
        read for the usage of abandoned responses."""
        return not self.ending or (self.abandoning and side is self.upstream)

    def _feed(self, side: Side, data: bytes) -> None:
        if side.lost or side.close_received:
            return
        if side.held and self._hold is not None:  # a read that was under way when reading paused
            self._hold.rest.append(data)
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
                if self._hold is not None and side is self.upstream:
                    self._keep_for_later(buf, end)
                    return
                continue
            verdict = self._inspect(side, payload_of(buf, header), opcode == OP_BINARY)
            if verdict.forward and not (verdict.to_client or verdict.to_upstream or verdict.close or verdict.durable):
                pos = end
                continue
            other.write(buf[run:pos])
            self._carry_out(side, verdict, buf[pos:end], other)
            pos = run = end
            if self._hold is not None and side is self.upstream:  # this message waits for the ledger
                self._keep_for_later(buf, end)
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
        side.frag_len += header.length
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
        durable = verdict.durable
        if durable is None or durable.done() or side is not self.upstream or self.ending:
            self._execute(verdict, original, other)
            return
        self._hold = _Hold(verdict, original)
        side.hold()
        durable.add_done_callback(self._durable_done)

    def _keep_for_later(self, buf: bytes, end: int) -> None:
        """What followed a held message in this read waits with it (reading is paused)."""
        if end < len(buf) and self._hold is not None:
            self._hold.rest.append(buf[end:])

    def _durable_done(self, durable: asyncio.Future[None]) -> None:
        """The held message's usage is durable: send it, then what upstream sent after it."""
        hold = self._hold
        if hold is None or hold.verdict.durable is not durable:
            return  # the session ended meanwhile; `_end` released the hold
        self._hold = None
        side = self.upstream  # still `held` (not read) until what was read after the message is fed
        try:
            self._execute(hold.verdict, hold.original, self.client)
        except Exception as exc:
            self._failed(exc)
            return
        rest = b"".join(hold.rest)
        if rest:
            self._guarded(side, rest)  # may hold again at the next response.done
        if self._hold is None:
            side.unhold()
            self._refresh_fast(side)
            if self._deferred_end is not None and not self.ending:
                deferred, self._deferred_end = self._deferred_end, None
                self._end(*deferred)

    def _execute(self, verdict: Verdict, original: bytes, other: Side) -> None:
        if verdict.forward:
            other.write(original)
        for message in verdict.to_upstream:
            self.upstream.write(build_frame(OP_TEXT, message.encode(), masked=True))
        for message in verdict.to_client:
            self.client.write(build_frame(OP_TEXT, message.encode(), masked=False))
        if verdict.close is not None:
            close = verdict.close
            self._end(
                close.end_reason,
                None,
                build_close(close.code, close.reason, masked=False),
                build_close(1000, masked=True),
                GATEWAY,
            )

    def _on_tick(self) -> None:
        self._tick = None
        if self.ending:
            return
        try:
            self._execute(self.live.tick(), b"", self.upstream)
            self._schedule_tick()
        except Exception as exc:
            self._failed(exc)

    # Ending
    def _close_frame(self, side: Side, buf: bytes, header: FrameHeader, pos: int) -> None:
        code, _ = parse_close(payload_of(buf, header))
        side.close_received = True
        if not self.ending:
            original = buf[pos : header.payload_end]  # a valid frame in the other direction too
            echo_to_side = build_close(code, masked=side is self.upstream)
            if side is self.client:
                self._end("client_closed", f"client close code {code}", echo_to_side, original, CLIENT)
            else:
                end_reason = "upstream_closed" if code in (None, 1000, 1001) else "upstream_error"
                self._end(end_reason, f"upstream close code {code}", original, echo_to_side, UPSTREAM)
        elif self.abandoning and side is self.upstream:
            self._finish_abandon(f"upstream closed with {code}")
        self._settle(side)

    def _protocol_error(self, side: Side, detail: str) -> None:
        side.close_received = True  # its byte stream can no longer be followed: read no more
        if side is self.client:
            self._end(
                "client_closed",
                f"client protocol error: {detail}",
                build_close(CLOSE_PROTOCOL_ERROR, masked=False),
                build_close(1000, masked=True),
                CLIENT,
            )
        else:
            if self.abandoning:
                self._finish_abandon("upstream protocol error")
            self._end(
                "upstream_error",
                f"upstream protocol error: {detail}",
                build_close(CLOSE_BAD_GATEWAY, "upstream protocol error", masked=False),
                build_close(CLOSE_PROTOCOL_ERROR, masked=True),
                UPSTREAM,
            )

    def _too_big(self, side: Side) -> None:
        if side is self.client:
            self._end(
                "client_closed",
                "client message too big",
                build_close(CLOSE_TOO_BIG, masked=False),
                build_close(1000, masked=True),
                CLIENT,
            )
        else:
            self._end(
                "upstream_error",
                "upstream message too big",
                build_close(CLOSE_BAD_GATEWAY, "upstream message too big", masked=False),
                build_close(CLOSE_TOO_BIG, masked=True),
                UPSTREAM,
            )

    def _lost(self, side: Side) -> None:
        side.lost = True
        if not self.ending:
            if side is self.client:
                self._end("client_closed", "client connection lost", None, build_close(1000, masked=True), CLIENT)
            else:
                self._end(
                    "upstream_error",
                    "upstream connection lost",
                    build_close(CLOSE_BAD_GATEWAY, "upstream connection lost", masked=False),
                    None,
                    UPSTREAM,
                )
        elif self.abandoning and side is self.upstream:
            self._finish_abandon("upstream connection lost")
        self._settle(self._other(side))
        self._maybe_done()

    def _end(
        self, end_reason: str, detail: str | None, to_client: bytes | None, to_upstream: bytes | None, cause: str
    ) -> None:
        """Record the end once, send each side its close frame, and let the handshakes finish.

        While a `response.done` waits for the ledger, an end that does not come from the
        client waits for it (at most the durable timeout), so the client still gets it. An
        end on the client's side or voxgate's abandons upstream: the client gets its close at
        once, upstream gets `response.cancel` for each response in flight and the fence (an
        `input_audio_buffer.clear`), and is read on until the fence is answered and every
        response has its `response.done` metered (`_finish_abandon`), at most
        `abandon_wait_seconds`. Only then is upstream closed.
        """
        if self.ending:
            return
        if self._hold is not None and cause != CLIENT and not self.client.lost:
            if self._deferred_end is None:
                self._deferred_end = (end_reason, detail, to_client, to_upstream, cause)
            return
        self.ending = True
        self.client.fast = self.upstream.fast = False
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        hold, self._hold = self._hold, None
        # Upstream may be about to start a response (server VAD on audio already sent) or be
        # running one: it bills either. Ends on upstream's side, or a failure of voxgate's, send nothing more.
        abandon = cause in (CLIENT, GATEWAY) and not self.upstream.lost and not self.upstream.close_received
        if abandon:
            self.abandoning = True
            self._ending_as = (end_reason, detail)
            self._upstream_close = to_upstream
            if to_client is not None:
                self.client.send_close(to_client)
            in_flight = self.live.responses_in_flight
            for message in self.live.abandon_responses().to_upstream:
                self.upstream.write(build_frame(OP_TEXT, message.encode(), masked=True))
            self._abandon_timer = self._loop.call_later(self.abandon_wait_seconds, self._abandon_expired)
            if in_flight:
                log.info(
                    "session %s ended (%s) with a response in flight: cancelled upstream, waiting up to %.1f s "
                    "for its usage",
                    self.live.session_id,
                    end_reason,
                    self.abandon_wait_seconds,
                )
        else:
            if self.live.usage_pending:  # upstream is gone or unreadable: its usage can no longer come
                log.error(
                    "session %s ended (%s) with usage still owed upstream; the ledger may lack it",
                    self.live.session_id,
                    end_reason,
                )
                self.live.responses_unbilled(f"{end_reason}: {detail}" if detail else end_reason)
            self.live.end(end_reason, detail)
            for side, frame in ((self.client, to_client), (self.upstream, to_upstream)):
                if frame is not None:
                    side.send_close(frame)
        for side in (self.client, self.upstream):
            side.resume()  # read the close reply (or the abandoned responses) even if this side was throttled
            side.unhold()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_SECONDS, self._abort)
        if hold is not None:  # the client is gone: what it would have been sent goes nowhere
            self._execute(hold.verdict, hold.original, self.client)
            rest = b"".join(hold.rest)
            if rest:
                self._guarded(self.upstream, rest)
        self._settle(self.client)
        self._settle(self.upstream)

    def _abandon_expired(self) -> None:
        self._abandon_timer = None
        self._finish_abandon(f"no response.done within {self.abandon_wait_seconds:g} s")

    def _finish_abandon(self, unbilled: str | None) -> None:
        """Stop reading upstream for abandoned responses: record the end, close upstream.

        `unbilled` says why it stopped early (None: the fence was answered and every response
        in flight was metered).
        """
        if not self.abandoning:
            return
        self.abandoning = False
        if self._abandon_timer is not None:
            self._abandon_timer.cancel()
            self._abandon_timer = None
        if unbilled is not None and self.live.usage_pending:
            log.error(
                "session %s: stopped waiting for the usage of a cancelled response or a transcription (%s); "
                "upstream may bill what the ledger does not have",
                self.live.session_id,
                unbilled,
            )
            self.live.responses_unbilled(unbilled)
        assert self._ending_as is not None
        self.live.end(*self._ending_as)
        self.upstream.send_close(self._upstream_close or build_close(1000, masked=True))
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_SECONDS, self._abort)
        self._settle(self.upstream)

    def _settle(self, side: Side) -> None:
        """Close a side's TCP once its close handshake is complete (or it has no peer left)."""
        if not side.lost and side.close_sent and side.close_received:
            side.transport.close()

    def _abort(self) -> None:
        for side in (self.client, self.upstream):
            if not side.lost and not (self.abandoning and side is self.upstream):
                side.transport.abort()

    def _maybe_done(self) -> None:
        if self.client.lost and self.upstream.lost and self._finishing is None:
            if self._close_timer is not None:
                self._close_timer.cancel()
            if self._abandon_timer is not None:
                self._abandon_timer.cancel()
            self._finishing = self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        if self._ending_as is not None:
            self.live.end(*self._ending_as)  # a no-op unless abandoning ended without `_finish_abandon`
        try:
            await self.live.aclose()  # pending shared-state work, the concurrency lease
        except Exception:
            log.exception("closing session %s failed", self.live.session_id)
        finally:
            self.done.set_result(None)
            self._on_done(self)
