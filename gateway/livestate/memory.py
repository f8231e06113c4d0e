"""`MemoryLiveState`: the live-state interface in one process's memory (docs/live-state.md).

For a single-process deployment and for tests. It keeps the Redis backend's semantics, step for
step (caps, sliding start window, reservations with expiry, settle once per id, `since`/known
counters and rebuild, reaping by `now`): each method runs without awaiting in between, so it is
atomic on the event loop exactly as a Lua script is atomic in Redis. Several `MemoryLiveState`
objects sharing one `MemoryStore` behave like replicas sharing one Redis. It never raises
`RedisError`. Broadcasts go to every subscriber of the store, at most once: a subscriber that
falls `BROADCAST_BUFFER` messages behind loses the newest.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.livestate.base import LiveStateBackend
from gateway.livestate.broadcast import Broadcast
from gateway.livestate.budgets import SETTLE_DEDUPE_S, RefusedBy, ReserveResult, SpendState
from gateway.livestate.keys import SINCE_TTL_S, BudgetWindows, check_tenant_id
from gateway.livestate.leases import INDEX_IDLE_S, LeaseResult
from gateway.livestate.ratelimits import START_WINDOW_S, Headroom, StartResult

log = logging.getLogger(__name__)

BROADCAST_BUFFER = 1_000  # messages a slow subscriber may lag behind before it misses some


@dataclass
class _Window:
    spent: int = 0
    known: bool = False
    expires_at: float = 0.0  # like the Redis key's TTL: window end + WINDOW_MARGIN_S


@dataclass
class _Tenant:
    leases: dict[str, float] = field(default_factory=dict)  # session -> expiry
    lease_models: dict[str, str] = field(default_factory=dict)  # leased session -> its per-model cap's model
    reaped: set[str] = field(default_factory=set)
    starts: list[float] = field(default_factory=list)  # sorted start times
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # reservation -> (amount, expiry)
    settled: dict[str, float] = field(default_factory=dict)  # reservation -> settle time
    since: tuple[str, float] | None = None  # (marker, last touched)
    windows: dict[str, _Window] = field(default_factory=dict)  # "day:YYYY-MM-DD" / "month:YYYY-MM"

    @property
    def reserved(self) -> int:
        return sum(amount for amount, _ in self.holds.values())


@dataclass
class MemoryStore:
    """The shared data of every `MemoryLiveState` built on it (one process)."""

    tenants: dict[str, _Tenant] = field(default_factory=dict)
    index: dict[str, float] = field(default_factory=dict)  # tenants with leases or holds -> last activity
    headroom: Headroom | None = None
    # (tenant, call) -> (owner, expiry) of each call's monitor claim
    monitors: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    subscribers: list[asyncio.Queue[Broadcast]] = field(default_factory=list)

    def tenant(self, tenant_id: str) -> _Tenant:
        return self.tenants.setdefault(check_tenant_id(tenant_id), _Tenant())


def _reap_leases(t: _Tenant, now: float) -> None:
    expired = [s for s, expiry in t.leases.items() if expiry <= now]
    for s in expired:
        del t.leases[s]
        t.lease_models.pop(s, None)
    t.reaped.update(expired)


def _reap_holds(t: _Tenant, now: float) -> None:
    for rid in [rid for rid, (_, expiry) in t.holds.items() if expiry <= now]:
        del t.holds[rid]


class MemoryLiveState(LiveStateBackend):
    """The live-state interface for one process (same semantics as the Redis `LiveState`)."""

    def __init__(self, store: MemoryStore | None = None, instance_id: str = "") -> None:
        self.store = store if store is not None else MemoryStore()
        self.instance_id = instance_id

    async def ping(self) -> None:
        return None

    # -- concurrency leases ------------------------------------------------------------------

    async def acquire_session(
        self,
        tenant_id: str,
        session_id: str,
        limit: int | None,
        ttl_s: float,
        now: float,
        model: str | None = None,
        model_limit: int | None = None,
    ) -> LeaseResult:
        t = self.store.tenant(tenant_id)
        self.store.index[tenant_id] = now
        _reap_leases(t, now)
        moving = bool(model) and t.lease_models.get(session_id) != model
        of_model = sum(1 for m in t.lease_models.values() if m == model) if model else 0
        if not (session_id in t.leases or limit is None or len(t.leases) < limit):
            return LeaseResult(False, len(t.leases), of_model, "tenant")
        if moving and model_limit is not None and of_model >= model_limit:
            return LeaseResult(False, len(t.leases), of_model, "model")
        t.leases[session_id] = now + ttl_s
        t.reaped.discard(session_id)
        if moving and model:
            t.lease_models[session_id] = model
            of_model += 1
        return LeaseResult(True, len(t.leases), of_model)

    async def heartbeat(self, sessions: Iterable[tuple[str, str]], ttl_s: float, now: float) -> list[tuple[str, str]]:
        lost: list[tuple[str, str]] = []
        for tenant_id, session_id in sessions:
            t = self.store.tenant(tenant_id)
            if session_id in t.leases:  # renews what still exists, never resurrects
                t.leases[session_id] = now + ttl_s
            else:
                lost.append((tenant_id, session_id))
        return lost

    async def release_session(self, tenant_id: str, session_id: str) -> bool:
        t = self.store.tenant(tenant_id)
        t.reaped.discard(session_id)
        t.lease_models.pop(session_id, None)
        return t.leases.pop(session_id, None) is not None

    async def active_sessions(self, tenant_id: str, now: float) -> int:
        t = self.store.tenant(tenant_id)
        _reap_leases(t, now)
        return len(t.leases)

    async def active_model_sessions(self, tenant_id: str, model: str, now: float) -> int:
        t = self.store.tenant(tenant_id)
        _reap_leases(t, now)
        return sum(1 for m in t.lease_models.values() if m == model)

    async def reap_expired(self, now: float) -> list[tuple[str, str]]:
        reaped: list[tuple[str, str]] = []
        for tenant_id, touched in list(self.store.index.items()):
            t = self.store.tenant(tenant_id)
            _reap_leases(t, now)
            reaped.extend((tenant_id, s) for s in sorted(t.reaped))
            t.reaped.clear()
            _reap_holds(t, now)
            if not t.leases and not t.holds and touched < now - INDEX_IDLE_S:
                del self.store.index[tenant_id]
        # Claims of monitors that stopped renewing (Redis lets their keys' TTL remove them).
        for key in [k for k, (_, expiry) in self.store.monitors.items() if expiry <= now - INDEX_IDLE_S]:
            del self.store.monitors[key]
        return reaped

    # -- call monitor claims ----------------------------------------------------------------

    def _claim(self, tenant_id: str, call_id: str, ttl_s: float, now: float, take: bool) -> bool:
        key = (check_tenant_id(tenant_id), call_id)
        held = self.store.monitors.get(key)
        live = held is not None and held[1] > now
        if not ((held is not None and held[0] == self.instance_id and live) or (take and not live)):
            return False
        self.store.monitors[key] = (self.instance_id, now + ttl_s)
        return True

    async def claim_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        return self._claim(tenant_id, call_id, ttl_s, now, take=True)

    async def renew_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        return self._claim(tenant_id, call_id, ttl_s, now, take=False)

    async def release_monitor(self, tenant_id: str, call_id: str) -> bool:
        key = (check_tenant_id(tenant_id), call_id)
        held = self.store.monitors.get(key)
        if held is None or held[0] != self.instance_id:
            return False
        del self.store.monitors[key]
        return True

    async def monitor_taken(self, tenant_id: str, call_id: str, now: float) -> bool:
        held = self.store.monitors.get((check_tenant_id(tenant_id), call_id))
        return held is not None and held[0] != self.instance_id and held[1] > now

    # -- session start rate ------------------------------------------------------------------

    async def take_start(self, tenant_id: str, per_minute: int, now: float) -> StartResult:
        if per_minute <= 0:
            return StartResult(False, START_WINDOW_S)
        t = self.store.tenant(tenant_id)
        del t.starts[: bisect.bisect_right(t.starts, now - START_WINDOW_S)]
        if len(t.starts) < per_minute:
            bisect.insort(t.starts, now)
            return StartResult(True, 0.0)
        wait = t.starts[0] + START_WINDOW_S - now if t.starts else START_WINDOW_S
        return StartResult(False, max(wait, 0.0))

    # -- budgets -----------------------------------------------------------------------------

    def _window(self, t: _Tenant, name: str, start: float, expires_at: float, since: str, now: float) -> _Window:
        w = t.windows.get(name)
        if w is None or w.expires_at <= now:
            w = t.windows[name] = _Window()
        if not w.known and float(since) <= start:
            w.known = True
        w.expires_at = expires_at
        return w

    def _load(self, tenant_id: str, now: float) -> tuple[_Tenant, _Window, _Window, str]:
        t = self.store.tenant(tenant_id)
        if t.since is None or t.since[1] + SINCE_TTL_S <= now:  # first use, or idle past the marker's life
            t.since = (repr(now), now)
        since = t.since[0]
        t.since = (since, now)
        _reap_holds(t, now)
        b = BudgetWindows.at(now)
        day = self._window(t, "day:" + b.day, b.day_start, now + b.day_ttl, since, now)
        month = self._window(t, "month:" + b.month, b.month_start, now + b.month_ttl, since, now)
        for name in [n for n, w in t.windows.items() if w.expires_at <= now]:
            del t.windows[name]
        return t, day, month, since

    @staticmethod
    def _state(t: _Tenant, day: _Window, month: _Window, now: float) -> SpendState:
        b = BudgetWindows.at(now)
        reserved = t.reserved
        return SpendState(b.day, b.month, day.spent, month.spent, reserved, reserved, day.known and month.known)

    async def spend_with_marker(self, tenant_id: str, now: float) -> tuple[SpendState, str]:
        t, day, month, since = self._load(tenant_id, now)
        return self._state(t, day, month, now), since

    async def reserve(
        self,
        tenant_id: str,
        reservation_id: str,
        amount: int,
        daily_limit: int | None,
        monthly_limit: int | None,
        now: float,
        ttl_s: float,
        forced: bool = False,
    ) -> ReserveResult:
        if amount < 0:
            raise ValueError("amount must be >= 0 micro-USD")
        for limit in (daily_limit, monthly_limit):
            if limit is not None and limit < 0:
                raise ValueError("limits must be >= 0 micro-USD or None")
        self.store.index[check_tenant_id(tenant_id)] = now
        t, day, month, _ = self._load(tenant_id, now)
        if reservation_id in t.holds:
            return ReserveResult(True, self._state(t, day, month, now))
        if reservation_id in t.settled:
            return ReserveResult(False, self._state(t, day, month, now), "settled")
        if (daily_limit is not None and not day.known) or (monthly_limit is not None and not month.known):
            return ReserveResult(False, self._state(t, day, month, now), "unknown")
        held = t.reserved + amount
        over: RefusedBy | None = None
        if daily_limit is not None and day.spent + held > daily_limit:
            over = "day"
        elif monthly_limit is not None and month.spent + held > monthly_limit:
            over = "month"
        if over is not None and not forced:
            return ReserveResult(False, self._state(t, day, month, now), over)
        t.holds[reservation_id] = (amount, now + ttl_s)
        return ReserveResult(over is None, self._state(t, day, month, now), over)

    async def settle(self, tenant_id: str, reservation_id: str, actual: int, now: float) -> SpendState:
        if actual < 0:
            raise ValueError("actual must be >= 0 micro-USD")
        t, day, month, _ = self._load(tenant_id, now)
        if reservation_id in t.settled:
            return self._state(t, day, month, now)
        t.holds.pop(reservation_id, None)
        day.spent += actual
        month.spent += actual
        t.settled[reservation_id] = now
        for rid in [rid for rid, at in t.settled.items() if at <= now - SETTLE_DEDUPE_S]:
            del t.settled[rid]
        return self._state(t, day, month, now)

    async def add_history(self, tenant_id: str, since: str, day_sum: int, month_sum: int, now: float) -> bool:
        t = self.store.tenant(tenant_id)
        if t.since is None or t.since[0] != since:
            return False
        b = BudgetWindows.at(now)
        for name, amount, expires_at in (
            ("day:" + b.day, day_sum, now + b.day_ttl),
            ("month:" + b.month, month_sum, now + b.month_ttl),
        ):
            w = t.windows.setdefault(name, _Window())
            if not w.known:
                w.spent += amount
                w.known = True
            w.expires_at = expires_at
        return True

    async def forget_spend(self, tenant_id: str, now: float) -> None:
        t = self.store.tenant(tenant_id)
        b = BudgetWindows.at(now)
        t.since = None
        t.windows.pop("day:" + b.day, None)
        t.windows.pop("month:" + b.month, None)

    # -- broadcasts --------------------------------------------------------------------------

    async def publish(self, kind: str, tenant_id: str, detail: dict[str, Any] | None = None) -> int:
        event = Broadcast(kind, tenant_id, dict(detail or {}), self.instance_id)
        delivered = 0
        for queue in list(self.store.subscribers):
            try:
                queue.put_nowait(event)
                delivered += 1
            except asyncio.QueueFull:
                log.warning("a live-state subscriber is %d broadcasts behind; it misses one", BROADCAST_BUFFER)
        return delivered

    async def subscribe(self, ready: asyncio.Event | None = None) -> AsyncIterator[Broadcast]:
        queue: asyncio.Queue[Broadcast] = asyncio.Queue(BROADCAST_BUFFER)
        self.store.subscribers.append(queue)
        try:
            if ready is not None:
                ready.set()
            while True:
                yield await queue.get()
        finally:
            self.store.subscribers.remove(queue)

    # -- upstream headroom -------------------------------------------------------------------

    async def record_headroom(self, tokens_limit: int, tokens_remaining: int, reset_seconds: float, now: float) -> None:
        seen = self.store.headroom
        if seen is not None and seen.observed_at > now:
            return
        self.store.headroom = Headroom(int(tokens_limit), int(tokens_remaining), float(reset_seconds), now)

    async def headroom(self, now: float) -> Headroom | None:
        h = self.store.headroom
        return None if h is None or now >= h.resets_at else h
