"""The fast relay: the WebSocket transport shell around `LiveSession`, and how its sessions end.

`FastRelay` owns both sockets after the upgrade. The per-frame work and the holds are the
splice core's (splice.py); the timers and late verdicts are the shell kit's
(`gateway.session.kit`); this module decides how a session ends: close frames end it
with the reasons in docs/close-codes.md (`gateway.session.close_reasons`), each side's write
buffer throttles reading from the other, and everything runs in transport callbacks: no
task per frame.

Billing stays whole (docs/relay.md, "Billing"): while a `response.done` waits for the
ledger, an end that does not come from the client waits for it; and a session that ends on
the client's side or voxgate's cancels what runs upstream, fences the input audio (so
server VAD starts nothing unseen) and keeps reading upstream, for at most
`abandon_wait_seconds`, until the fence is answered and every billed `response.done` has
been metered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from gateway.clock import SYSTEM_CLOCK, Clock, Timer
from gateway.realtime.fastrelay.frames import OP_TEXT, FrameHeader, build_close, build_frame, parse_close, payload_of
from gateway.realtime.fastrelay.side import Side
from gateway.realtime.fastrelay.splice import Splice
from gateway.session import close_reasons as ends
from gateway.session.close_reasons import CLOSE_PROTOCOL_ERROR, Ending
from gateway.session.kit import SessionKit
from gateway.session.live import LiveSession, Verdict
from gateway.telemetry.relay_probe import RelayProbe
from policies.actions import CloseSession
from policies.caps import CLOSE_BAD_GATEWAY, CLOSE_TOO_BIG

log = logging.getLogger("voxgate.fastrelay")

CLOSE_TIMEOUT_SECONDS = 2.0
# Per-transport write buffer: above HIGH the other side stops being read, below LOW it resumes.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
ABANDON_WAIT_SECONDS = 5.0  # the default of VOXGATE_ABANDON_WAIT_SECONDS
OPENING_OVERFLOW = Ending("upstream_error", CLOSE_BAD_GATEWAY, "upstream sent too much before the session opened")

# Who ended a session: the client's side (it left, closed, or broke the protocol), upstream's,
# or voxgate (a drain, a policy close). Only the first and last leave upstream to abandon.
CLIENT, UPSTREAM, GATEWAY, FAILURE = "client", "upstream", "gateway", "failure"
EndPlan = tuple[str, str | None, bytes | None, bytes | None, str]


def client_close(ending: Ending) -> bytes | None:
    return None if ending.code is None else build_close(ending.code, ending.reason, masked=False)


class FastRelay(Splice):
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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(live, client, upstream, max_message_bytes)
        self.abandon_wait_seconds = abandon_wait_seconds
        self.clock = clock
        self.kit = SessionKit(live, self._late, clock)
        self._abandon_timer: Timer | None = None
        self._ending_as: tuple[str, str | None] | None = None  # the end to record once abandoning is over
        self._upstream_close: bytes | None = None  # the close frame upstream gets once abandoning is over
        self._deferred_end: EndPlan | None = None
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._close_timer: Timer | None = None
        self._finishing: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.probe: RelayProbe | None = None  # sampled relay latency (set by the protocol after the upgrade)

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
        self._begin_opening()
        self.kit.start()

    async def _late(self, verdict: Verdict) -> None:
        """Verdicts that arrive between frames (ticks, budget reservations, policy broadcasts)."""
        if self.ending:
            return
        try:
            self._execute(verdict, b"", self.upstream)
            self._gate_released()
        except Exception as exc:
            self._failed(exc)

    # Drainable (services.live)
    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        """End the session from outside (drain): `code` to the client, 1000 upstream."""
        self._end(end_reason, None, build_close(code, reason, masked=False), build_close(1000, masked=True), GATEWAY)

    # Events from the two protocols
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

    # The splice's hooks
    def _after_feed(self, side: Side) -> None:
        if side is self.upstream and self._check_opening():
            self._end_as(OPENING_OVERFLOW, None, UPSTREAM, build_close(1000, masked=True))
        if self.abandoning and not self.live.awaiting_upstream:
            self._finish_abandon(None)

    def _hold_released(self) -> None:
        if self._deferred_end is not None and not self.ending:
            deferred, self._deferred_end = self._deferred_end, None
            self._end(*deferred)

    def _act_close(self, close: CloseSession) -> None:
        to_client = build_close(close.code, close.reason, masked=False)
        self._end(close.end_reason, None, to_client, build_close(1000, masked=True), GATEWAY)

    def _failed(self, exc: Exception) -> None:
        log.exception(
            "fast relay failed for session %s", self.live.session_id, exc_info=exc, extra=self.live.log_fields
        )
        self._end_as(ends.GATEWAY_ERROR, type(exc).__name__, FAILURE, build_close(1000, masked=True))

    def _close_frame(self, side: Side, buf: bytes, header: FrameHeader, pos: int) -> None:
        code, _ = parse_close(payload_of(buf, header))
        side.close_received = True
        if not self.ending:
            original = buf[pos : header.payload_end]  # a valid frame in the other direction too
            echo_to_side = build_close(code, masked=side is self.upstream)
            if side is self.client:
                self._end(ends.CLIENT_CLOSED.end_reason, f"client close code {code}", echo_to_side, original, CLIENT)
            else:
                reason = ends.upstream_close_reason(code)
                self._end(reason, f"upstream close code {code}", original, echo_to_side, UPSTREAM)
        elif self.abandoning and side is self.upstream:
            self._finish_abandon(f"upstream closed with {code}")
        self._settle(side)

    def _protocol_error(self, side: Side, detail: str) -> None:
        side.close_received = True  # its byte stream can no longer be followed: read no more
        if side is self.client:
            ending = ends.CLIENT_PROTOCOL_ERROR
            self._end_as(ending, f"client protocol error: {detail}", CLIENT, build_close(1000, masked=True))
            return
        if self.abandoning:
            self._finish_abandon("upstream protocol error")
        upstream_close = build_close(CLOSE_PROTOCOL_ERROR, masked=True)
        self._end_as(ends.UPSTREAM_PROTOCOL_ERROR, f"upstream protocol error: {detail}", UPSTREAM, upstream_close)

    def _too_big(self, side: Side) -> None:
        if side is self.client:
            self._end_as(ends.CLIENT_TOO_BIG, "client message too big", CLIENT, build_close(1000, masked=True))
        else:
            upstream_close = build_close(CLOSE_TOO_BIG, masked=True)
            self._end_as(ends.UPSTREAM_TOO_BIG, "upstream message too big", UPSTREAM, upstream_close)

    # Ending
    def _lost(self, side: Side) -> None:
        side.lost = True
        if not self.ending:
            if side is self.client:
                self._end_as(ends.CLIENT_LOST, ends.CLIENT_LOST.reason, CLIENT, build_close(1000, masked=True))
            else:
                self._end_as(ends.UPSTREAM_LOST, ends.UPSTREAM_LOST.reason, UPSTREAM, None)
        elif self.abandoning and side is self.upstream:
            self._finish_abandon("upstream connection lost")
        self._settle(self._other(side))
        self._maybe_done()

    def _end_as(self, ending: Ending, detail: str | None, cause: str, to_upstream: bytes | None) -> None:
        self._end(ending.end_reason, detail, client_close(ending), to_upstream, cause)

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
        self.kit.stop()
        if self.opening:  # what upstream sent meanwhile (an error before it closed, say) still goes out
            self.opening = False
            self.client.ungate()
        hold = self._take_hold()
        # Upstream may be about to start a response (server VAD on audio already sent) or be
        # running one: it bills either. Ends on upstream's side, or a failure of voxgate's, send nothing more.
        abandon = cause in (CLIENT, GATEWAY) and not self.upstream.lost and not self.upstream.close_received
        if abandon:
            self._abandon(end_reason, detail, to_client, to_upstream)
        else:
            if self.live.usage_pending:  # upstream is gone or unreadable: its usage can no longer come
                log.error(
                    "session %s ended (%s) with usage still owed upstream; the ledger may lack it",
                    self.live.session_id,
                    end_reason,
                    extra=self.live.log_fields,
                )
                self.live.responses_unbilled(f"{end_reason}: {detail}" if detail else end_reason)
            self.live.end(end_reason, detail)
            for side, frame in ((self.client, to_client), (self.upstream, to_upstream)):
                if frame is not None:
                    side.send_close(frame)
        for side in (self.client, self.upstream):
            side.resume()  # read the close reply (or the abandoned responses) even if this side was throttled
            side.unhold()
        self._close_timer = self.clock.call_later(CLOSE_TIMEOUT_SECONDS, self._abort)
        self._release_hold(hold)  # the client is gone or closing: what it would have been sent goes out now
        backlog = self.client.take_backlog()
        if backlog:  # the client's messages held by the opening: only a close frame among them matters now
            self._guarded(self.client, backlog)
        self._settle(self.client)
        self._settle(self.upstream)

    def _abandon(self, end_reason: str, detail: str | None, to_client: bytes | None, to_upstream: bytes | None) -> None:
        self.abandoning = True
        self._ending_as = (end_reason, detail)
        self._upstream_close = to_upstream
        if to_client is not None:
            self.client.send_close(to_client)
        in_flight = self.live.responses_in_flight
        for message in self.live.abandon_responses().to_upstream:
            self.upstream.write(build_frame(OP_TEXT, message.encode(), masked=True))
        self._abandon_timer = self.clock.call_later(self.abandon_wait_seconds, self._abandon_expired)
        if in_flight:
            log.info(
                "session %s ended (%s) with a response in flight: cancelled upstream, waiting up to %.1f s "
                "for its usage",
                self.live.session_id,
                end_reason,
                self.abandon_wait_seconds,
                extra=self.live.log_fields,
            )

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
                extra=self.live.log_fields,
            )
            self.live.responses_unbilled(unbilled)
        assert self._ending_as is not None
        self.live.end(*self._ending_as)
        self.upstream.send_close(self._upstream_close or build_close(1000, masked=True))
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.clock.call_later(CLOSE_TIMEOUT_SECONDS, self._abort)
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
