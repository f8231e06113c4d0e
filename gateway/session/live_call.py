"""`LiveCall`: the shell around one `policies.live.governor.LiveGovernor`, for any Live transport.

It owns no socket. A transport hands it decoded client and upstream events and gives it two
senders (`LiveSides`); `LiveCall` asks the governor, carries out the actions (sends, ledger
rows, budget reservations through the session's `SessionEffects`, closes) and keeps the
governor's clock (`run_ticks`). The WebSocket route (`gateway/live/route.py`) drives it from
both sockets; a WebRTC sideband drives it with a `client` side that has no socket (its
`send` drops, its `close` hangs up). How a session ends:

    call.end(reason)     # once: books the estimate (no session.closed), releases reservations
    await call.aclose()  # finishes the shared-state work, gives the concurrency lease back

It is a `CarriedSession` (`services.live`): budget broadcasts and policy changes reach it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger.records import DurationRecord, LiveTokenRecord, SessionEnded, SessionStarted
from gateway.ledger.writer import LedgerWriter
from gateway.services import GatewayServices
from gateway.session.assembly import shared_state
from gateway.session.effects import SessionEffects
from policies.actions import (
    AuditEvent,
    CloseSession,
    Forward,
    ForwardRewritten,
    RecordSpend,
    ReserveBudget,
    SendToClient,
    SendToUpstream,
    SessionInfoRecord,
    SettleBudget,
)
from policies.live.config import LiveRefusal
from policies.live.governor import LiveAction, LiveGovernor
from policies.live.records import VOICE, BookLiveUsage, LiveUsageRecord
from policies.policy import UNRESTRICTED, TenantPolicy

log = logging.getLogger("voxgate.live")
Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LiveSides:
    """How the call reaches its two peers: text senders and closers."""

    send_client: Send
    send_upstream: Send
    close_client: Close
    close_upstream: Close


def ledger_record(record: LiveUsageRecord) -> DurationRecord | LiveTokenRecord:
    """The ledger's row for a booked piece of Live usage: time in `duration_usage`, tokens in `live_token_usage`."""
    if record.kind == VOICE:
        return DurationRecord(
            record.session_id,
            record.kind,
            record.usage_id,
            record.tenant_id,
            record.model,
            record.occurred_at,
            record.active_ms,
            record.standby_ms,
            record.estimated,
            record.cost_micro_usd,
            record.price_version,
            record.cumulative_micro_usd,
        )
    return LiveTokenRecord(
        record.session_id,
        record.kind,
        record.usage_id,
        record.tenant_id,
        record.model,
        record.service_tier,
        record.status,
        record.occurred_at,
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        record.cost_micro_usd,
        record.price_version,
    )


def book_durably(ledger: LedgerWriter, record: DurationRecord | LiveTokenRecord) -> asyncio.Future[None]:
    """Queue a Live row with `LedgerWriter.submit_durable`: resolved once committed, or journaled and
    fsynced after the durable timeout. Live rows are idempotent per (session, kind, usage id), so a
    commit and a journal replay write them once, as for the usage rows the writer's signature names."""
    return ledger.submit_durable(cast(Any, record))


class LiveCall:
    """Meters and polices one Live session for whichever transport carries it."""

    def __init__(
        self,
        services: GatewayServices,
        governor: LiveGovernor,
        started: SessionStarted,
        policy: TenantPolicy | None,
        sides: LiveSides,
        *,
        leased: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.governor = governor
        self.started = started
        self.leased = leased
        self.sides = sides
        self.clock = clock
        self.ledger = services.ledger
        self._leases = shared_state(services)
        self.effects = SessionEffects(
            self._leases, started.tenant_id, started.session_id, policy or UNRESTRICTED, clock=clock
        )
        self.ended: SessionEnded | None = None
        self.closed = asyncio.Event()  # set once a CloseSession was carried out
        self.close_code: int | None = None
        self.end_reason: str | None = None
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._info_written = False
        self._shutdown: asyncio.Future[None] | None = None
        self.ledger.submit(started)

    # -- CarriedSession (services.live) ------------------------------------------------------------

    @property
    def live(self) -> LiveCall:
        return self

    @property
    def session_id(self) -> str:
        return self.started.session_id

    async def budget_exhausted(self, now: float) -> None:
        await self.act(self.governor.on_budget_exhausted(now))

    async def policy_changed(self, policy: TenantPolicy, now: float) -> None:
        self.effects.policy = policy
        await self.act(self.governor.on_policy_changed(policy, now))

    async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
        await self.act(self.governor.on_reservation(reservation_id, granted, self.clock.time()))

    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        """A drain: close both sides now (the governor books what it can at `end`)."""
        self._shutdown = asyncio.ensure_future(self.act([CloseSession(code, reason, end_reason)]))

    # -- the transport's entry points --------------------------------------------------------------

    def start(self) -> None:
        self.effects.start(self)

    async def from_client(self, message: str | bytes) -> None:
        event = _decode(message)
        now = self.clock.time()
        live = self.governor.phase == "live"
        if event is None or (live and event.get("type") == "session.input_audio.append"):
            # Audio (the commonest message) has no policy to apply; what is not a JSON object upstream
            # answers with its own `error`. Neither may overtake a `session.start` still held.
            self.governor.note_client_activity(now)
            if live:
                await self.sides.send_upstream(_text(message))
            return
        starting = self.governor.phase == "awaiting_start"
        actions = self.governor.on_client_event(event, now)
        if starting and self.leased and self.governor.phase != "closed":  # the model is known only now
            actions = await self._lease_model(actions, event, now)
        await self.act(actions, original=message, toward="upstream")

    async def _lease_model(self, actions: list[LiveAction], event: dict[str, Any], now: float) -> list[LiveAction]:
        """Count the session under its model (`max_concurrent_sessions_per_model`) before its start
        goes upstream; at the model's cap the start is refused instead (gateway.session.leases)."""
        model, started = self.governor.identity.model, self.started
        refused = await self._leases.lease_model(
            started.tenant_id, started.session_id, self.effects.policy, model, now, "session.model"
        )
        if refused is None:
            return actions
        refusal = LiveRefusal(refused.code, refused.message, refused.param or "", refused.type)
        return self.governor._refuse_start(refusal, event, now)

    async def from_upstream(self, message: str | bytes) -> None:
        event = _decode(message)
        if event is None or event.get("type") == "session.output_audio.delta":
            await self.sides.send_client(_text(message))
            return
        await self.act(self.governor.on_server_event(event, self.clock.time()), original=message, toward="client")
        if not self._info_written and self.governor.upstream_session_id is not None:
            self._info_written = True
            session = event.get("session")
            self.ledger.submit(
                SessionInfoRecord(
                    self.session_id, self.governor.identity.model, _voice(session), self.governor.upstream_session_id
                )
            )

    async def client_gone(self) -> None:
        """The client left: ask upstream to close, so `session.closed` brings the final usage."""
        await self.act(self.governor.on_client_gone(self.clock.time()))

    @property
    def awaiting_upstream(self) -> bool:
        return self.governor.awaiting_upstream

    async def run_ticks(self) -> None:
        """The governor's clock: `on_tick` at its next deadline, at least once a second. Cancel to stop."""
        while True:
            now = self.clock.time()
            deadline = self.governor.next_deadline()
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
            self._poke.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(wait))
            poked = asyncio.ensure_future(self._poke.wait())
            try:
                await asyncio.wait({sleeper, poked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                poked.cancel()
            await self.act(self.governor.on_tick(self.clock.time()))

    def end(self, reason: str, detail: str | None = None) -> None:
        """Record the end once: an estimate when upstream never sent `session.closed`; later calls are ignored."""
        if self.ended is not None:
            return
        now = self.clock.time()
        self._book_and_share(self.governor.on_end(now))
        self.ended = SessionEnded(self.session_id, now, reason, detail)
        self.ledger.submit_end(self.ended)

    async def aclose(self) -> None:
        await self.effects.stop()
        if self.leased:
            self.leased = False
            await self.effects.release_lease()

    # -- carrying out actions ----------------------------------------------------------------------

    async def act(self, actions: Sequence[LiveAction], original: str | bytes | None = None, toward: str = "") -> None:
        """Carry out `actions` in order; `Forward` sends `original` on `toward` its destination.

        The rows they book are durable before anything is sent: the event that carried the usage
        (and whatever follows it) is held until then, as a Realtime `response.done` is."""
        durable = self._book_and_share(actions)
        async with self._lock:
            if durable:
                await asyncio.gather(*durable)
            for action in actions:
                if isinstance(action, Forward) and original is not None:
                    await self._send(toward, _text(original))
                elif isinstance(action, ForwardRewritten):
                    await self._send(toward, orjson.dumps(action.event).decode())
                elif isinstance(action, SendToClient):
                    await self.sides.send_client(orjson.dumps(action.event).decode())
                elif isinstance(action, SendToUpstream):
                    await self.sides.send_upstream(orjson.dumps(action.event).decode())
                elif isinstance(action, CloseSession):
                    await self._close(action)
        self._poke.set()

    def _book_and_share(self, actions: Sequence[LiveAction]) -> list[asyncio.Future[None]]:
        durable: list[asyncio.Future[None]] = []
        for action in actions:
            if isinstance(action, BookLiveUsage):
                durable.append(book_durably(self.ledger, ledger_record(action.record)))
            elif isinstance(action, ReserveBudget | SettleBudget | RecordSpend):
                self.effects.submit(action)
            elif isinstance(action, AuditEvent):
                self.ledger.submit(action)
        return durable

    async def _send(self, toward: str, text: str) -> None:
        await (self.sides.send_upstream if toward == "upstream" else self.sides.send_client)(text)

    async def _close(self, close: CloseSession) -> None:
        if self.closed.is_set():
            return
        self.close_code, self.end_reason = close.code, close.end_reason
        self.closed.set()
        for closer in (self.sides.close_client, self.sides.close_upstream):
            try:
                await closer(close.code, close.reason)
            except Exception as exc:  # a side already gone: nothing left to tell it
                log.debug("session %s: closing a side failed: %r", self.session_id, exc)


def _decode(message: str | bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _text(message: str | bytes) -> str:
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


def _voice(session: object) -> str | None:
    audio = session.get("audio") if isinstance(session, Mapping) else None
    output = audio.get("output") if isinstance(audio, Mapping) else None
    voice = output.get("voice") if isinstance(output, Mapping) else None
    if isinstance(voice, Mapping):
        voice = voice.get("id")
    return voice if isinstance(voice, str) else None
