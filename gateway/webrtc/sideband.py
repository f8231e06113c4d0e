"""The sideband monitor: meters and polices WebRTC calls through `wss://…/v1/realtime?call_id=`.

For every call voxgate brokers or is asked to attach, one replica opens a sideband
WebSocket to upstream and drives the call's `LiveSession` with what it sees: each
`response.done` is priced into the ledger exactly once, `rate_limits.updated` is stored,
and the governor's caps and budgets act through `session.update` (re-clamping),
`response.cancel` and, to end a call, `POST /v1/realtime/calls/{call_id}/hangup`.

Ownership is a Redis claim per call (`<prefix>{<tenant>}:monitor:<call_id>`), renewed by
the owning replica. If that replica dies, the claim lapses and another replica's scan
attaches a new sideband within seconds. Metering continues without double counting: the
ledger is keyed by `response_id`, and a fresh sideband only sees new events.

A claim lives half a concurrency-lease TTL (T/2), renewed at least every T/6. A brokered
call's session holds a concurrency lease, renewed by its holder's heartbeat every T/3, so a
holder that dies just after renewing its claim leaves the lease as little as T - T/3 - T/2 =
T/6 past the claim's lapse. `serve` therefore requires a scan shorter than T/6, and the
takeover renews the lease (`LeaseKeeper.take_over`) before resuming, so another replica's
reaper never ends (`replica_lost`) a call being metered here while this replica's heartbeat
(up to T/3 away) has yet to renew it. The calls store does not record whether a call holds a
lease, so a taken-over brokered call is carried as holding one (its admission took it; one
admitted without, while Redis was down under `fail_open`, gets one at the takeover) and an
attached call as not (its client secret's lease was given back at the mint).

The same background loop sweeps client secrets that expired without an attached call and
ends their session rows (`client_secret_expired`); every replica sweeps, Postgres row locks
make each row end once (`CallStore.expire_unattached_secrets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any

import httpx
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.background import stop_tasks
from gateway.errors import GatewayError, outage_refusal
from gateway.ledger.writer import SessionEnded
from gateway.livestate import LiveStateBackend
from gateway.services import SHUTDOWN_WAIT_SECONDS, GatewayServices
from gateway.session import close_reasons as ends
from gateway.session.assembly import SessionPlan, assemble, release_admission, shared_state
from gateway.session.kit import SessionKit
from gateway.session.live import LiveSession, Verdict
from gateway.telemetry import start_session_trace
from gateway.telemetry.attributes import SPAN_UPSTREAM_CONNECT
from gateway.upstream import USER_AGENT, open_upstream, upstream_headers
from gateway.upstream_tls import http_client
from gateway.webrtc.calls_cache import RedisCallCache
from gateway.webrtc.calls_store import EXPIRED_UNATTACHED, Call, CallStore
from policies.policy import UNRESTRICTED, TenantPolicy

log = logging.getLogger("voxgate.sideband")

SECRET_SWEEP_SECONDS = 15.0  # how often each replica looks for expired, never-attached client secrets
# A browser opens its call before the secret expires, but its backend may attach a little later.
SECRET_ATTACH_GRACE_SECONDS = 60.0
EXPIRED_UNATTACHED_DETAIL = "the client secret expired and no call was attached with it"


@dataclass(frozen=True, slots=True)
class MonitoredCall:
    """What the monitor needs to know about a call (built from the calls store's record)."""

    call_id: str
    tenant_id: str
    session_id: str
    model: str
    policy: TenantPolicy | None
    safety_id: str
    api_key_id: str | None = None
    leased: bool = False  # the call holds a concurrency lease (taken at admission)


class Sideband:
    """One call's sideband connection: a transport shell around the call's `LiveSession`."""

    def __init__(self, monitor: CallsMonitor, call: MonitoredCall, live: LiveSession, upstream: ClientConnection):
        self.monitor = monitor
        self.call = call
        self.live = live
        self.upstream = upstream
        self._stop: asyncio.Future[tuple[int, str, str] | None] = asyncio.get_running_loop().create_future()
        self.kit = SessionKit(live, self._apply, monitor.services.clock)

    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        """Gateway drain: stop watching, but never hang up a customer's call for it.

        The monitor claim is released so another replica picks the call up at once; the
        concurrency lease stays, for the next holder to renew.
        """
        if not self._stop.done():
            self._stop.set_result(None)

    async def _apply(self, verdict: Verdict) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in verdict.to_upstream:
                await self.upstream.send(message)
        # The client's events travel on its own data channel; a sideband cannot add to it.
        if verdict.close is not None and not self._stop.done():
            self._stop.set_result((verdict.close.code, verdict.close.reason, verdict.close.end_reason))

    async def run(self) -> None:
        pump = asyncio.create_task(self._pump())
        self.kit.start()
        try:
            waiting: list[asyncio.Future[Any]] = [pump, self._stop]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if self._stop in done:
                outcome = self._stop.result()
                if outcome is None:  # handed over (drain): the call goes on
                    return
                _, reason, end_reason = outcome
                await self._await_responses_in_flight(pump, end_reason)
                log.info("hanging up call %s: %s", self.call.call_id, reason)
                await self.monitor.hangup(self.call.call_id)
                self.live.end(end_reason, reason)
            else:
                self.live.end(*await self.monitor.why_it_ended(self.call.call_id, *pump.result()))
        finally:
            self.kit.stop()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            with contextlib.suppress(Exception):
                await self.upstream.close()

    async def _await_responses_in_flight(self, pump: asyncio.Task[Any], end_reason: str) -> None:
        """Before a hangup voxgate decided (a cap, a budget): the responses upstream is producing
        (cancelled by the governor) get their `response.done` metered, for up to the abandon wait, as
        a WebSocket session's do; a hangup at once lost them, and their reservations were settled at
        the worst case. What is still missing then is recorded (`response_unbilled`)."""
        clock = self.monitor.services.clock
        wait = self.monitor.services.settings.server.abandon_wait_seconds
        deadline = clock.monotonic() + wait
        while self.live.responses_in_flight and not pump.done() and clock.monotonic() < deadline:
            await clock.sleep(0.02)
        if self.live.responses_in_flight:
            cause = f"no response.done within {wait:g} s" if not pump.done() else "the sideband closed"
            self.live.responses_unbilled(f"{end_reason}: {cause}")

    async def _pump(self) -> tuple[str, str | None]:
        try:
            async for data in self.upstream:
                await self._apply(self.live.from_upstream(data, binary=isinstance(data, bytes)))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return ends.SIDEBAND_LOST.end_reason, ends.SIDEBAND_LOST.reason
        return ends.CALL_ENDED.end_reason, f"sideband closed with {self.upstream.close_code}"


class CallsMonitor:
    """Attaches sidebands to calls, owns them through live-state monitor claims, resumes orphans.

    One per process (`GatewayServices.calls_monitor`); the calls it watches are the calls store's
    (`store`): it marks a call ended there when its sideband sees it end, and its scan resumes
    the store's active calls that no live replica monitors.
    """

    def __init__(
        self,
        services: GatewayServices,
        claims: LiveStateBackend,
        claim_ttl_s: float = 5.0,  # half the concurrency-lease TTL (gateway/app.py; see the module docstring)
        scan_every_s: float = 2.0,
        secret_sweep_s: float = SECRET_SWEEP_SECONDS,
        secret_grace_s: float = SECRET_ATTACH_GRACE_SECONDS,
    ) -> None:
        self.services = services
        self.claim_ttl_s = claim_ttl_s
        self._claims = claims  # one claim per call: which replica monitors it (gateway.livestate.monitors)
        self.scan_every_s = scan_every_s
        self.secret_sweep_s = secret_sweep_s
        self.secret_grace_s = secret_grace_s
        cache = RedisCallCache(services.redis, services.settings.redis.key_prefix)
        self.store = CallStore(services.pool, cache, services.clock)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._calls: dict[str, MonitoredCall] = {}
        self._sidebands: dict[str, Sideband] = {}  # of the calls in `_running` whose sideband is open
        self._offered: set[str] = set()  # calls whose claim a drain gave back (`_offer_to_successor`)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def monitored(self, call: Call | MonitoredCall) -> MonitoredCall:
        """A call of the calls store (or a MonitoredCall) with the tenant's current policy."""
        if isinstance(call, MonitoredCall):
            return call
        policy = call.policy
        if policy is UNRESTRICTED:  # a call loaded from storage
            policy, _ = await shared_state(self.services).policy_for(call.tenant_id)
        return MonitoredCall(
            call_id=call.call_id,
            tenant_id=call.tenant_id,
            session_id=call.session_id,
            model=call.model or "gpt-realtime",
            policy=policy,
            safety_id=call.safety_id,
            api_key_id=call.api_key_id,
            leased=call.leased,
        )

    async def attach(self, call: Call | MonitoredCall) -> bool:
        """Start monitoring `call` here if no live replica owns it. True if this replica does now."""
        call = await self.monitored(call)
        if call.call_id in self._running:
            return True
        if not await self._claim(call):
            return False
        self._start(call)
        return True

    async def take_over(self, stored: Call) -> bool:
        """Monitor a call of the calls store that no live replica monitors (its holder died, or handed
        it over at its drain); True if this replica does now.

        A brokered call's session holds a concurrency lease (taken at its admission; the store does
        not record it): the takeover renews it before the sideband opens, and this replica carries it
        from then on (heartbeats, released at the call's end). If the live state does not answer,
        the claim is given back and the next scan tries again."""
        if stored.call_id in self._running:
            return True
        call = await self.monitored(replace(stored, leased=stored.leased or stored.source == "brokered"))
        if not await self._claim(call):
            return False
        if call.leased:
            services = self.services
            try:  # its dead holder's last heartbeat may leave the lease only T/6 past the claim's lapse
                await services.enforcement.take_over(
                    call.tenant_id, call.session_id, stored.model, services.clock.time()
                )
            except RedisError as exc:
                log.warning(
                    "cannot renew the concurrency lease of call %s (%s); the next scan retries", call.call_id, exc
                )
                await self._release_claim(call)
                return False
        log.warning("taking over the sideband of call %s (its monitor stopped)", call.call_id)
        self._start(call)
        return True

    async def _claim(self, call: MonitoredCall) -> bool:
        try:
            return await self._claims.claim_monitor(
                call.tenant_id, call.call_id, self.claim_ttl_s, self.services.clock.time()
            )
        except RedisError as exc:
            log.warning("cannot take the monitor claim of %s: %s", call.call_id, exc)
            return False

    def _start(self, call: MonitoredCall) -> None:
        self._calls[call.call_id] = call
        self._running[call.call_id] = asyncio.create_task(self._watch(call), name=f"voxgate-sideband-{call.call_id}")

    async def _watch(self, call: MonitoredCall) -> None:
        services = self.services
        trace = start_session_trace("webrtc", services.clock)
        trace.admitted(call.session_id, call.tenant_id, call.model, "realtime")
        started = services.clock.monotonic()
        try:
            with trace.step(SPAN_UPSTREAM_CONNECT):
                upstream = await open_upstream(services.settings.upstream, {"call_id": call.call_id}, call.safety_id)
        except asyncio.CancelledError:  # the replica stops: the next holder need not wait for the claim to lapse
            await self._forget(call)
            raise
        except GatewayError as exc:
            trace.refused(exc.code or "none", exc.status)
            log.warning("sideband for %s refused upstream: %s", call.call_id, exc.message)
            try:
                if exc.status == 404:  # upstream no longer knows the call: it ended while nobody watched
                    await self._ended_unwatched(call)
            finally:  # cancelled meanwhile (the replica stops) included
                await self._forget(call)
            return
        if self._stopping or services.live.draining:  # opened as the replica stops: for the next holder
            trace.refused("gateway_draining", 503)
            with contextlib.suppress(Exception):
                await upstream.close()
            await self._forget(call)
            return
        # The browser talks to upstream directly: nothing can be held, so the opening is not.
        plan = SessionPlan(
            session_id=call.session_id,
            tenant_id=call.tenant_id,
            api_key_id=call.api_key_id,
            transport="webrtc",
            intent="realtime",
            model=call.model,
            safety_id=call.safety_id,
            policy=call.policy,
            leased=call.leased,
            new_session=False,
        )
        services.metrics.upstream_connect.labels("webrtc").observe(services.clock.monotonic() - started)
        live = assemble(services, plan, services.clock, trace)
        sideband = Sideband(self, call, live, upstream)
        self._sidebands[call.call_id] = sideband
        services.live.add(sideband)
        try:
            await sideband.run()
        finally:
            try:
                if live.ended is None:  # handed over: the call and its concurrency lease live on
                    live.leased = False
                await live.aclose()
                await self._forget(call, live.ended.end_reason if live.ended is not None else None)
            finally:
                # Only now: a drain waits for its sessions to leave the registry, so a stopping replica
                # gives its claims and leases back before its stores close.
                services.live.discard(sideband)

    async def _forget(self, call: MonitoredCall, end_reason: str | None = None) -> None:
        self._offered.discard(call.call_id)
        self._running.pop(call.call_id, None)
        self._calls.pop(call.call_id, None)
        self._sidebands.pop(call.call_id, None)
        await self._release_claim(call)
        if end_reason is not None:
            await self.store.end(call.call_id, end_reason)

    async def _release_claim(self, call: MonitoredCall) -> None:
        try:
            await self._claims.release_monitor(call.tenant_id, call.call_id)
        except RedisError as exc:  # no money or session lease: the monitor claim lapses on its TTL
            log.warning("could not release the monitor claim of %s (%s); it lapses on its TTL", call.call_id, exc)

    async def why_it_ended(self, call_id: str, end_reason: str, detail: str | None) -> tuple[str, str | None]:
        """Why the session of a call whose sideband dropped ended: a hangup through voxgate marks the
        call before it reaches upstream, so its reason wins over what the sideband saw."""
        try:
            stored = await self.store.get(call_id)
        except Exception:
            log.exception("could not read call %s to learn why it ended", call_id)
            return end_reason, detail
        if stored is not None and stored.state == "ended" and stored.end_reason == "hangup":
            return ends.CALL_HUNG_UP.end_reason, f"call {call_id}"
        return end_reason, detail

    async def _ended_unwatched(self, call: MonitoredCall) -> None:
        """End the session and the call of a call that ended upstream before a sideband saw it."""
        self.services.ledger.submit(
            SessionEnded(
                call.session_id,
                self.services.clock.time(),
                "call_ended",
                "the call was gone upstream when its sideband attached",
            )
        )
        self.services.metrics.sessions_ended.labels("call_ended").inc()
        if call.leased:
            await release_admission(self.services, call.tenant_id, call.session_id)
        await self._forget(call, "call_ended")

    def watching(self, call_id: str) -> MonitoredCall | None:
        """The call if this replica is monitoring it now."""
        return self._calls.get(call_id)

    async def hangup(self, call_id: str) -> None:
        settings = self.services.settings.upstream
        headers = upstream_headers(settings, "", None)
        headers.pop("OpenAI-Safety-Identifier", None)
        headers["User-Agent"] = USER_AGENT
        try:
            async with http_client(settings, timeout=settings.connect_timeout_seconds) as http:
                response = await http.post(f"{settings.url}/realtime/calls/{call_id}/hangup", headers=headers)
            if response.status_code >= 400:
                log.warning("upstream refused hangup of %s: %s", call_id, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("hangup of %s failed: %s", call_id, type(exc).__name__)

    # -- background: renew owned claims, resume orphaned calls ---------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._maintain(), name="voxgate-calls-monitor")

    async def stop(self) -> None:
        """Stop scanning and renewing; open sidebands stop watching (hand their calls over) and
        finish, sidebands still connecting are cancelled and give their claims back."""
        self._stopping = True
        if self._loop_task is not None:
            await stop_tasks([self._loop_task], clock=self.services.clock)
        # Open sidebands (the drain ended those it saw; one may have opened since) finish their lease,
        # settles, claim and the call's row: cancelling them could cut that short. Real-time bounds.
        for sideband in list(self._sidebands.values()):
            sideband.shutdown(1001, "gateway shutting down", "gateway_shutdown")
        ending = [task for call_id, task in self._running.items() if call_id in self._sidebands]
        if ending:
            await asyncio.wait(ending, timeout=SHUTDOWN_WAIT_SECONDS)
        await stop_tasks([task for task in self._running.values() if not task.done()])

    async def sweep_expired_secrets(self, now: float | None = None) -> list[str]:
        """End the session rows of client secrets that expired unattached (past the grace period).

        Safe on every replica at once: each row is ended by exactly one sweep. Returns the
        session ids this sweep ended.
        """
        now = self.services.clock.time() if now is None else now
        ended = await self.store.expire_unattached_secrets(now, self.secret_grace_s, EXPIRED_UNATTACHED_DETAIL)
        if ended:
            self.services.metrics.sessions_ended.labels(EXPIRED_UNATTACHED).inc(len(ended))
            log.info("ended %d client-secret sessions that expired without an attached call", len(ended))
        return ended

    async def _renew_claims(self) -> None:
        """Renew the claims held here. A call another replica took (this one stalled past the claim's
        life) is handed over: metering stops here, the call goes on, and its concurrency lease is the
        new holder's (renewed at its takeover). While Redis does not answer, metering goes on: when
        it is down for every replica nobody can take the call over; when only this replica is cut
        off, another may, and both meter it until this one hears of it, each response still booked
        once (one row per response id)."""
        draining = self.services.live.draining
        for call in list(self._calls.values()):
            if call.call_id not in self._calls:  # it ended meanwhile (its claim given back)
                continue
            if draining:
                await self._offer_to_successor(call)
                continue
            try:  # taken back if it lapsed while this replica stalled and nobody took it meanwhile
                held = await self._claims.claim_monitor(
                    call.tenant_id, call.call_id, self.claim_ttl_s, self.services.clock.time()
                )
            except RedisError as exc:  # renewed again on the next pass; the TTL covers two misses
                log.warning("could not renew the monitor claim of %s: %s", call.call_id, exc)
                continue
            if not held:
                log.warning("another replica monitors call %s now; handing it over", call.call_id)
                self._hand_over(call.call_id)
            elif call.call_id not in self._calls:  # it ended while the renewal was on its way: give it back
                await self._release_claim(call)

    async def _offer_to_successor(self, call: MonitoredCall) -> None:
        """While the replica drains: give the call's claim back at once, so another replica's scan takes
        the call during the drain's grace, and meter on until that replica holds it; both meter it
        meanwhile (one row per response id), so no response finishes unwatched between the two. With
        no successor, the sideband stops at the grace's end, as before."""
        try:
            if call.call_id not in self._offered:
                await self._claims.release_monitor(call.tenant_id, call.call_id)
                self._offered.add(call.call_id)
            elif await self._claims.monitor_taken(call.tenant_id, call.call_id, self.services.clock.time()):
                log.info("another replica monitors call %s now; handing it over (drain)", call.call_id)
                self._hand_over(call.call_id)
        except RedisError as exc:  # tried again on the next pass; at the grace's end the sideband stops anyway
            log.warning("could not offer call %s to another replica: %s", call.call_id, exc)

    def _hand_over(self, call_id: str) -> None:
        sideband = self._sidebands.get(call_id)
        if sideband is not None:
            sideband.shutdown(1001, "handed over", "handed_over")  # stops watching; never hangs up
        elif (task := self._running.get(call_id)) is not None:
            task.cancel()  # still connecting: it gives the claim back (if still its own)

    async def _maintain(self) -> None:
        renew_every = self.claim_ttl_s / 3
        waits = [renew_every] + [s for s in (self.scan_every_s, self.secret_sweep_s) if s > 0]
        next_scan = next_sweep = 0.0
        while not self._stopping:
            await self.services.clock.sleep(min(waits))
            await self._renew_claims()
            now = self.services.clock.monotonic()
            if self.secret_sweep_s > 0 and now >= next_sweep:
                next_sweep = now + self.secret_sweep_s
                try:
                    async with self.services.background.slot():  # a bounded share of the pool
                        await self.sweep_expired_secrets()
                except Exception as exc:
                    if outage_refusal(exc, self.services.clock) is None:  # an outage is logged there, once
                        log.exception("sweeping expired client secrets failed")
            if self.scan_every_s <= 0 or now < next_scan or self.services.live.draining:
                continue
            next_scan = now + self.scan_every_s
            try:
                async with self.services.background.slot():  # a bounded share of the pool
                    active = await self.store.active()
                for stored in active:  # calls not ended; take_over() skips owned ones
                    if self._stopping or self.services.live.draining:
                        break
                    if stored.call_id not in self._running:
                        await self.take_over(stored)  # only if no live replica holds its claim
            except Exception:
                log.exception("scanning for unmonitored calls failed")
