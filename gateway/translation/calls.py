"""Translation calls over WebRTC, brokered and metered by wall-clock time (docs/translation.md#webrtc-calls).

voxgate admits the offer under the tenant's policy, reserves the cost of the policy's session
cap, mints an ephemeral key upstream with the policy's model, posts the offer with it and
records the call durably before the answer goes back. The media never passes through voxgate
and upstream reports no usage, so the meter runs from the moment the offer was sent upstream
(the call cannot have started earlier) to the end:

* a hangup through voxgate: the end is when upstream confirmed it (not estimated);
* the cap: any replica's sweep hangs the call up upstream and books exactly the cap
  (estimated: voxgate cannot know whether the peer left earlier).

The booking is at most the reservation, so a budget is never overrun by a call, and the
reservation is settled to the booked cost. From admission until it is booked the call holds a
concurrency lease (the tenant's and its model's caps), renewed by every replica's sweep
(`call_leases`) and given back on every end path.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Final

import orjson

from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.ledger.records import DurationRecord, SessionEnded, SessionStarted
from gateway.services import GatewayServices
from gateway.session.admission import draining_error, refusing_outages
from gateway.session.assembly import shared_state
from gateway.session.close_reasons import CALL_HUNG_UP, UPSTREAM_LOST
from gateway.session.effects import SessionEffects
from gateway.translation.call_budget import reserve_cap
from gateway.translation.call_leases import CallLeases
from gateway.translation.call_store import TranslationCall, TranslationCallStore
from gateway.translation.meter import TRANSLATION
from gateway.translation.unconfirmed import NO_CALL_ID, unconfirmed_failure, unconfirmed_record
from gateway.webrtc.access import Caller
from gateway.webrtc.context import WebRtcContext
from gateway.webrtc.upstream_http import call_id_from_location
from policies.actions import SettleBudget
from policies.caps import DURATION_CAP
from policies.policy import TenantPolicy
from policies.pricing import duration_cost_micro_usd

log = logging.getLogger("voxgate.translation")

DEFAULT_MODEL: Final = "gpt-realtime-translate"
# The cap when the policy sets no `max_session_seconds`: one hour.
DEFAULT_CAP_S: Final = 3600.0
# The ephemeral key only has to outlive the one offer voxgate posts with it.
EPHEMERAL_KEY_S: Final = 60
# A reservation outlives its call's cap by this much, so a sweep that is late still settles it.
RESERVATION_MARGIN_S: Final = 600.0
UPSTREAM_CALLS: Final = "/realtime/translations/calls"
END_HANGUP: Final = "hangup"
END_CAP: Final = "cap"


def call_cap_seconds(policy: TenantPolicy) -> float:
    return float(policy.max_session_seconds) if policy.max_session_seconds is not None else DEFAULT_CAP_S


def metered_ms(call: TranslationCall, end: float) -> int:
    """Whole milliseconds from the offer to `end`, rounded up, never past the cap."""
    return max(0, min(capped_ms(call), math.ceil(round((end - call.offered_at) * 1000, 6))))


def cap_ms(cap_s: float) -> int:
    """The cap in whole milliseconds (what is reserved, and what a capped call books)."""
    return round(cap_s * 1000)


def capped_ms(call: TranslationCall) -> int:
    # Postgres keeps microseconds: the nearest millisecond of the stored span is the cap itself.
    return cap_ms(call.cap_at - call.offered_at)


@dataclass(frozen=True, slots=True)
class PlacedTranslationCall:
    call_id: str
    answer: bytes


class TranslationCalls:
    """The flows of translation calls in one process: place, hang up, sweep."""

    def __init__(self, context: WebRtcContext) -> None:
        self.context = context
        self.services: GatewayServices = context.services
        self.store = TranslationCallStore(self.services.pool)
        self.leases = CallLeases(self.services, self.store)

    # -- placing ----------------------------------------------------------------------------

    async def place(self, caller: Caller, sdp: str, model: str) -> PlacedTranslationCall:
        """Admit, reserve the cap's cost, mint a key, post the offer, record the call; else a GatewayError."""
        services = self.services
        if services.live.draining:
            raise draining_error()
        session_id = new_id("vgs")
        with refusing_outages():
            admitted = await services.enforcement.admit(
                caller.tenant_id, session_id, model, services.clock.time(), basis="durations"
            )
        policy = admitted.policy
        reservation_id = f"{session_id}:{TRANSLATION}"
        reserved, offered_at = 0, None
        cap_s = call_cap_seconds(policy)
        try:
            price, _ = services.prices.duration_price_for(model)
            reserved = duration_cost_micro_usd(price, active_ms=cap_ms(cap_s))
            await reserve_cap(
                services, caller.tenant_id, reservation_id, reserved, policy, cap_s + RESERVATION_MARGIN_S
            )
            key = await self._mint(caller, model)
            offered_at = services.clock.time()
            response = await self.context.upstream.post_sdp(UPSTREAM_CALLS, sdp, caller.safety_id, key)
        except BaseException as error:
            failure = unconfirmed_failure(error) if offered_at is not None else None
            if failure is not None and offered_at is not None:  # the call may exist upstream
                unconfirmed = _call(caller, session_id, model, reservation_id, reserved, offered_at, cap_s, "")
                await self._book_unconfirmed(unconfirmed, caller, policy, admitted.leased, failure)
                raise
            await self._give_back(caller.tenant_id, session_id, admitted.leased)
            await self._settle(caller.tenant_id, session_id, reservation_id, 0, policy)
            raise
        call_id = call_id_from_location(response.headers.get("location"))
        if call_id is None:
            # The call exists upstream, but without its id voxgate could never hang it up or meter
            # it (the peer never gets the answer): booked like an unconfirmed offer.
            unconfirmed = _call(caller, session_id, model, reservation_id, reserved, offered_at, cap_s, "")
            await self._book_unconfirmed(unconfirmed, caller, policy, admitted.leased, NO_CALL_ID)
            raise GatewayError(502, "The upstream answered without a usable call id.", code="upstream_bad_response")
        call = _call(caller, session_id, model, reservation_id, reserved, offered_at, cap_s, call_id)
        # From here the call holds its lease until it is booked; the sweep renews it (`call_leases`).
        await self._record(call, caller, policy, admitted.leased)
        return PlacedTranslationCall(call_id, response.content)

    async def _book_unconfirmed(
        self, call: TranslationCall, caller: Caller, policy: TenantPolicy, leased: bool, failure: str
    ) -> None:
        """The offer went out and its answer was lost: the call may be live upstream, where voxgate,
        without its id, can neither end nor meter it. Booked at once at its cap (estimated), the
        reservation settled to that; if the booking cannot be written the reservation is left to
        lapse, so the budget stays held (docs/translation.md#unconfirmed-offers)."""
        services = self.services
        record = unconfirmed_record(call, capped_ms(call), services.prices)
        log.error(
            "translation offer of session %s (tenant %s) unconfirmed (%s after the offer was sent): the call "
            "may be live upstream and cannot be hung up; booked at its cap, %d micro-USD (estimated)",
            call.session_id,
            call.tenant_id,
            failure,
            record.cost_micro_usd,
        )
        services.metrics.translation_offers_unconfirmed.labels(failure).inc()
        ended = SessionEnded(
            call.session_id, call.offered_at, UPSTREAM_LOST.end_reason, f"offer unconfirmed: {failure}"
        )
        try:
            await self.store.book_unconfirmed(self._started(call, caller), record, ended)
        except Exception:
            log.exception("could not book unconfirmed translation offer of session %s", call.session_id)
            await self._give_back(call.tenant_id, call.session_id, leased)
            return
        services.metrics.sessions_ended.labels(UPSTREAM_LOST.end_reason).inc()
        await self._give_back(call.tenant_id, call.session_id, leased)
        await self._settle(call.tenant_id, call.session_id, call.reservation_id, record.cost_micro_usd, policy)

    async def _give_back(self, tenant_id: str, session_id: str, leased: bool) -> None:
        if leased:
            await self.leases.release(tenant_id, session_id)

    async def _mint(self, caller: Caller, model: str) -> str:
        body = {"session": {"model": model}, "expires_after": {"anchor": "created_at", "seconds": EPHEMERAL_KEY_S}}
        minted = await self.context.upstream.send(
            "POST", "/realtime/translations/client_secrets", caller.safety_id, accept="application/json", body=body
        )
        try:
            value = orjson.loads(minted.content).get("value")
        except (orjson.JSONDecodeError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise GatewayError(502, "The upstream minted no usable client secret.", code="upstream_bad_response")
        return value

    async def _record(self, call: TranslationCall, caller: Caller, policy: TenantPolicy, leased: bool) -> None:
        """Record the placed call; if that fails it is hung up, and booked or released as its row says."""
        try:
            recorded = await self.store.record(call, self._started(call, caller))
        except Exception:
            log.exception("could not record translation call %s; hanging it up", call.call_id)
            await self._end_unrecorded(call, policy, leased)
            raise GatewayError(
                503, "The gateway could not record the call; retry.", code="call_not_recorded", retry_after=1.0
            ) from None
        if not recorded:
            await self._hangup_upstream(call)
            await self._give_back(call.tenant_id, call.session_id, leased)
            await self._settle(call.tenant_id, call.session_id, call.reservation_id, 0, policy)
            raise GatewayError(502, "The upstream reused a call id.", code="upstream_bad_response")

    def _started(self, call: TranslationCall, caller: Caller) -> SessionStarted:
        return SessionStarted(
            session_id=call.session_id,
            tenant_id=call.tenant_id,
            api_key_id=call.api_key_id,
            transport="webrtc",
            intent=TRANSLATION,
            model=call.model,
            end_user_hash=call.end_user_hash,
            gateway_instance=self.services.settings.server.instance_id,
            started_at=call.offered_at,
            tags=caller.tags,
        )

    async def _end_unrecorded(self, call: TranslationCall, policy: TenantPolicy, leased: bool) -> None:
        """The record's write failed, or only its acknowledgement was lost (the commit went through):
        the row decides. A recorded call is hung up and booked to now like any hangup; one that is
        not is hung up and its reservation released. Unknowable (Postgres unreachable): hung up,
        the reservation left to lapse (the budget stays held) and any row to the sweep."""
        try:
            stored = await self.store.get(call.call_id)
        except Exception as exc:
            log.error("translation call %s: recorded or not is unknown (%s)", call.call_id, type(exc).__name__)
            await self._hangup_upstream(call)
            await self._give_back(call.tenant_id, call.session_id, leased)
            return
        if stored is None or stored.session_id != call.session_id:
            await self._hangup_upstream(call)
            await self._give_back(call.tenant_id, call.session_id, leased)
            await self._settle(call.tenant_id, call.session_id, call.reservation_id, 0, policy)
            return
        log.warning("translation call %s was recorded after all; hanging it up and booking it", call.call_id)
        hung_up = await self._hangup_upstream(stored)
        try:
            await self._book(stored, END_HANGUP, self.services.clock.time(), hung_up=hung_up)
        except Exception:  # the row stays active: the sweep books it at its cap
            log.exception("could not book translation call %s after its lost acknowledgement", call.call_id)

    # -- ending -----------------------------------------------------------------------------

    async def hang_up(self, call: TranslationCall) -> None:
        """End an active call at the tenant's request: upstream first, then booked to that moment."""
        if call.state != "active":
            return  # hanging up twice is harmless
        claimed = await self.store.claim(call.call_id, self.services.clock.time())
        if claimed is None:
            current = await self.store.get(call.call_id)
            if current is not None and current.state != "active":
                return
            raise GatewayError(503, "The call is being ended; retry.", code="call_busy", retry_after=1.0)
        if not await self._hangup_upstream(claimed):
            await self.store.unclaim(claimed.call_id)  # the meter keeps running: the call may still be live
            raise GatewayError(502, "The upstream did not confirm the hangup; retry.", code="upstream_hangup_failed")
        await self._book(claimed, END_HANGUP, self.services.clock.time(), hung_up=True)

    async def sweep(self, limit: int = 50) -> int:
        """End the calls past their cap (any replica's): booked at the cap first, so the booking never
        waits on upstream, then hung up upstream (retried by later sweeps until upstream confirms).
        The count booked."""
        booked = 0
        for call in await self.store.claim_due(self.services.clock.time(), limit):
            if call.state == "active":
                booked += int(await self._book(call, END_CAP, call.cap_at, hung_up=False))
            elif call.settle_pending:  # its replica died between booking and settling
                await self._settle_booked(call, int(call.cost_micro_usd or 0))
            if call.upstream_hung_up:
                continue
            if await self._hangup_upstream(call):
                await self.store.hung_up(call.call_id)
            # Else the claim expires and a later sweep hangs up again.
        return booked

    async def _hangup_upstream(self, call: TranslationCall) -> bool:
        """True if upstream says the call is (now or already) gone."""
        try:
            await self.context.upstream.send(
                "POST", f"{UPSTREAM_CALLS}/{call.call_id}/hangup", call.end_user_hash or "", accept="*/*"
            )
        except GatewayError as error:
            if error.status == 404:
                return True
            log.warning("upstream hangup of translation call %s failed: %s", call.call_id, error.message)
            return False
        return True

    async def _book(self, call: TranslationCall, reason: str, end: float, *, hung_up: bool) -> bool:
        """Book the call ended at `end`; False if another replica had booked it."""
        services = self.services
        ms = capped_ms(call) if reason == END_CAP else metered_ms(call, end)
        price, key = services.prices.duration_price_for(call.model)
        record = DurationRecord(
            session_id=call.session_id,
            kind=TRANSLATION,
            usage_id=call.call_id,
            tenant_id=call.tenant_id,
            model=call.model,
            occurred_at=end,
            active_ms=ms,
            standby_ms=0,
            estimated=reason == END_CAP,
            cost_micro_usd=duration_cost_micro_usd(price, active_ms=ms),
            price_version=services.prices.version_for(key),
        )
        end_reason = CALL_HUNG_UP.end_reason if reason == END_HANGUP else DURATION_CAP.end_reason
        ended = SessionEnded(call.session_id, end, end_reason, f"translation call {call.call_id}")
        if not await self.store.end(call, reason, record, ended, hung_up):
            return False  # another replica booked it
        services.metrics.sessions_ended.labels(end_reason).inc()
        await self._settle_booked(call, record.cost_micro_usd)
        return True

    async def _settle_booked(self, call: TranslationCall, cost: int) -> None:
        """After the booking: the lease back, the reservation settled to the booked cost, then marked
        settled. A replica that dies before the mark leaves it to a sweep, which does it all again
        (both steps are idempotent: the settle counts once per reservation id)."""
        await self.leases.release(call.tenant_id, call.session_id)  # booked: its slot is free
        policy, _ = await self.services.enforcement.policy_for(call.tenant_id)
        await self._settle(call.tenant_id, call.session_id, call.reservation_id, cost, policy)
        await self.store.settled(call.call_id)

    async def _settle(
        self, tenant_id: str, session_id: str, reservation_id: str, actual: int, policy: TenantPolicy
    ) -> None:
        """Replace the reservation by `actual` (alerts and a budget broadcast as for any session)."""
        effects = SessionEffects(shared_state(self.services), tenant_id, session_id, policy, clock=self.services.clock)
        effects.start(_NoOwner())
        effects.submit(SettleBudget(reservation_id, 0, actual))
        await effects.stop()


def _call(
    caller: Caller,
    session_id: str,
    model: str,
    reservation_id: str,
    reserved: int,
    offered_at: float,
    cap_s: float,
    call_id: str,
) -> TranslationCall:
    return TranslationCall(
        call_id=call_id,
        tenant_id=caller.tenant_id,
        session_id=session_id,
        api_key_id=caller.api_key_id,
        end_user_hash=caller.safety_id,
        model=model,
        reservation_id=reservation_id,
        reserved_micro_usd=reserved,
        offered_at=offered_at,
        cap_at=offered_at + cap_s,
    )


class _NoOwner:
    async def reservation_answered(self, reservation_id: str, granted: bool) -> None:
        """A call reserves outside its effects: nothing asks through them."""


SWEEP_EVERY_S: Final = 1.0


async def sweep_forever(calls: TranslationCalls, every_s: float = SWEEP_EVERY_S) -> None:
    """Every replica sweeps, so a call outlives the replica that placed it; stops when the process drains.

    Each round also renews the leases of the active calls when due (`call_leases`): the rounds
    come at least that often."""
    services = calls.services
    tick = min(every_s, calls.leases.beat_every)
    failing = False
    while not services.live.draining:
        try:
            async with services.background.slot():  # a bounded share of the pool (gateway.storage.background)
                try:
                    await calls.leases.beat_if_due()
                finally:
                    await calls.sweep()  # a Redis outage does not hold the bookings back
            failing = False
        except Exception as exc:
            if services.live.draining:
                return
            if not failing:  # once per outage, not once a round
                log.warning("sweeping translation calls failed (%s); retrying every %.1f s", type(exc).__name__, tick)
            failing = True
        await asyncio.sleep(tick)
