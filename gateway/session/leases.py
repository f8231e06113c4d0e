"""Concurrency leases of the sessions this replica carries: kept alive, given back, and reaped.

Each live session holds a lease in the shared live state (taken at admission). `LeaseKeeper`
renews this replica's leases (a heartbeat every third of the TTL), gives them back when a
session ends (retried if the store is down), and reaps the leases of replicas whose
heartbeat stopped, ending their session rows (`replica_lost`). A replica never reaps its own
sessions, and after an outage it renews its own leases before reaping anyone's.

A lease may count under its session's model (`max_concurrent_sessions_per_model`): taken with
the model at admission (`take_lease`), or once the model is known (`lease_model`, a GPT-Live
WebSocket's `session.start`). A lease taken back after it lapsed keeps its model.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from redis.exceptions import RedisError

from gateway.clock import Clock
from gateway.ledger.writer import LedgerWriter, SessionEnded, SessionStarted
from gateway.livestate import LiveStateBackend
from gateway.livestate.leases import LeaseResult
from gateway.livestate.repair import LiveStateRepairs
from gateway.settings import EnforcementSettings
from policies.admission import Refuse, concurrency_refusal, model_concurrency_refusal
from policies.policy import TenantPolicy

log = logging.getLogger("voxgate.enforcement")

MAX_RELEASED = 100_000  # released leases remembered (for one lease TTL) against a late heartbeat


class CarriedSession(Protocol):
    """What the enforcement loops read of a live session and tell it (`gateway.session.live.LiveSession`)."""

    started: SessionStarted
    leased: bool

    @property
    def session_id(self) -> str: ...

    async def budget_exhausted(self, now: float) -> None: ...

    async def policy_changed(self, policy: TenantPolicy, now: float) -> None: ...


class EnforcedSession(Protocol):
    """A transport carrying a live session."""

    @property
    def live(self) -> CarriedSession: ...


class LeaseKeeper:
    """This replica's leases: heartbeats, releases and the reaper."""

    def __init__(
        self,
        live_state: LiveStateBackend,
        ledger: LedgerWriter,
        sessions: Callable[[], Iterable[EnforcedSession]],
        repairs: LiveStateRepairs,
        settings: EnforcementSettings,
        clock: Clock,
    ) -> None:
        self.lease_ttl = settings.lease_ttl_seconds
        self.beat_every = settings.lease_ttl_seconds / 3
        self.reap_every = settings.reap_interval_seconds
        self.state = live_state
        self.ledger = ledger
        self.repairs = repairs
        self.clock = clock
        self._sessions = sessions
        self._stopping = False
        self._outage = False  # a live-state call failed since the reaper last ran
        self._reap_after = 0.0  # after an outage, other replicas get one heartbeat to renew first
        # Leases given back recently -> when: a heartbeat or reap that was in flight meanwhile must
        # not take them back. Kept one lease TTL (no call outlives that), at most MAX_RELEASED.
        self._released: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._models: dict[tuple[str, str], str] = {}  # own leases counted under a model -> that model

    async def take_lease(
        self, tenant_id: str, session_id: str, policy: TenantPolicy, model: str | None, now: float
    ) -> Refuse | None:
        """Take a new session's lease under the tenant's caps, counted under `model` if given (its
        per-model cap applies); the refusal if a cap is full. Redis errors propagate."""
        lease = await self._acquire(tenant_id, session_id, policy.max_concurrent_sessions, policy, model, now)
        return None if lease.granted else self._refusal(policy, lease, model)

    async def lease_model(
        self, tenant_id: str, session_id: str, policy: TenantPolicy, model: str, now: float, param: str | None = None
    ) -> Refuse | None:
        """Count a session that already holds its lease under `model`, now that the model is known;
        the refusal if the tenant's sessions of that model are at its cap. If the store does not
        answer, the policy's `redis_unavailable` decides (as for a new session)."""
        try:
            lease = await self._acquire(tenant_id, session_id, None, policy, model, now)
        except RedisError as exc:
            self.store_failed()
            if policy.redis_unavailable == "fail_open":
                log.warning("live state unreachable (%s); %s not counted under %s", exc, session_id, model)
                return None
            message = "Shared session state is unavailable; retry shortly."
            return Refuse(503, "live_state_unavailable", message, type="server_error", retry_after=1.0)
        return None if lease.granted else self._refusal(policy, lease, model, param)

    async def take_over(self, tenant_id: str, session_id: str, model: str | None, now: float) -> None:
        """A session taken over from another replica: renew its lease now, uncapped and counted under
        `model` if given (idempotent; re-acquired if it lapsed but was not yet reported), so the reaper
        cannot end it before this replica's heartbeat, up to a third of a TTL away, renews it. Redis
        errors propagate (the takeover is retried at the next scan)."""
        await self.state.acquire_session(tenant_id, session_id, None, self.lease_ttl, now, model=model)
        if model:  # a lease taken back after it lapsed keeps its model
            self._models[(tenant_id, session_id)] = model

    def forget(self, tenant_id: str, session_id: str) -> None:
        """A session handed over to another replica: its lease stays (the next holder renews it), but
        this replica stops tracking it."""
        self._models.pop((tenant_id, session_id), None)

    async def _acquire(
        self, tenant_id: str, session_id: str, limit: int | None, policy: TenantPolicy, model: str | None, now: float
    ) -> LeaseResult:
        model_limit = policy.model_session_cap(model) if model else None
        lease = await self.state.acquire_session(
            tenant_id, session_id, limit, self.lease_ttl, now, model=model, model_limit=model_limit
        )
        if lease.granted and model:
            self._models[(tenant_id, session_id)] = model
        return lease

    @staticmethod
    def _refusal(policy: TenantPolicy, lease: LeaseResult, model: str | None, param: str | None = "model") -> Refuse:
        cap = policy.model_session_cap(model) if model else None
        if lease.refused_by == "model" and model and cap is not None:
            return model_concurrency_refusal(model, lease.model_active, cap, param)
        return concurrency_refusal(lease.active, policy.max_concurrent_sessions or 0)

    def store_failed(self) -> None:
        """A live-state call failed: repairs will check what the outage lost once it answers again."""
        self._outage = True
        self.repairs.store_failed()

    async def release(self, tenant_id: str, session_id: str) -> None:
        """Give the lease back; if Redis does not answer, the release is queued and retried.

        From this call on, no heartbeat or reap of this replica takes the lease back."""
        self._remember_released((tenant_id, session_id))
        self._models.pop((tenant_id, session_id), None)
        try:
            await self.state.release_session(tenant_id, session_id)
        except RedisError as exc:
            log.warning("releasing the lease of %s failed (%s); retrying in the background", session_id, exc)
            self.repairs.release_failed(tenant_id, session_id)
            self._outage = True

    def _remember_released(self, key: tuple[str, str]) -> None:
        now = self.clock.time()
        self._released[key] = now
        self._released.move_to_end(key)
        while self._released and (
            len(self._released) > MAX_RELEASED or next(iter(self._released.values())) < now - self.lease_ttl
        ):
            self._released.popitem(last=False)

    def _own_leases(self) -> set[tuple[str, str]]:
        """Sessions running here that hold a lease and have not begun giving it back."""
        held = {(s.live.started.tenant_id, s.live.session_id) for s in self._sessions() if s.live.leased}
        return held - self._released.keys()

    async def _take_back(self, lost: Iterable[tuple[str, str]]) -> None:
        """Re-acquire, uncapped, the lapsed leases of sessions that still run here and still hold one
        now (a lease reported lost may have been released while the report was in flight)."""
        own = self._own_leases()
        todo = [key for key in lost if key in own]
        if not todo:
            return
        log.warning("leases of %d own live sessions had lapsed; re-acquired them", len(todo))
        await asyncio.gather(
            *(
                self.state.acquire_session(
                    tenant_id,
                    session_id,
                    None,
                    self.lease_ttl,
                    self.clock.time(),
                    model=self._models.get((tenant_id, session_id)),  # counted under its model again
                )
                for tenant_id, session_id in todo
            )
        )
        still = self._own_leases()  # released while the acquire was in flight: give it back again
        await asyncio.gather(*(self.release(*key) for key in todo if key not in still))

    async def _beat(self) -> None:
        """Renew this replica's leases; one that is gone (reaped, Redis flushed) is taken back, uncapped:
        the session is running here, so it holds a slot whatever Redis says."""
        held = self._own_leases()
        if not held:
            return
        await self._take_back(await self.state.heartbeat(held, self.lease_ttl, self.clock.time()))

    async def _heartbeats(self) -> None:
        await self._every(self.beat_every, self._beat, "lease heartbeat")

    async def _reaper(self) -> None:
        await self._every(self.reap_every, self._reap_once, "lease reaper")

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]], name: str) -> None:
        """Run `step` every `seconds` until stopped; a store failure is logged and repaired later."""
        while not self._stopping:
            await self.clock.sleep(seconds)
            try:
                await step()
            except RedisError as exc:
                log.warning("%s failed: %s", name, exc)
                self.store_failed()

    async def _reap_once(self) -> None:
        """End the sessions of replicas whose heartbeat stopped; never one this process carries."""
        if self._outage:  # our own leases may have lapsed meanwhile: renew them before reaping anyone's,
            await self._beat()
            self._outage = False  # ...and let every other replica renew theirs (one heartbeat) first
            self._reap_after = self.clock.time() + self.beat_every + self.reap_every
        if self.clock.time() < self._reap_after:
            return
        reaped = await self.state.reap_expired(self.clock.time())
        if not reaped:
            return
        ours = {(s.live.started.tenant_id, s.live.session_id) for s in self._sessions()}
        await self._take_back(key for key in reaped if key in ours)  # alive here: a slow loop, an outage
        for tenant_id, session_id in reaped:
            if (tenant_id, session_id) in ours or (tenant_id, session_id) in self._released:
                continue  # running here, or ended here normally while its lease was being reaped
            log.info("reaped session %s of tenant %s (its replica stopped heartbeating)", session_id, tenant_id)
            self.ledger.submit(SessionEnded(session_id, self.clock.time(), "replica_lost", "lease expired"))
