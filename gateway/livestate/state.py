"""`LiveState`: everything voxgate shares across replicas, in Redis (docs/live-state.md).

One object per process. Every method that takes `now` (Unix seconds) uses it for all timing, so
callers and tests control time; Redis TTLs are only a safety net. Each update is one Lua script
(atomic), and all keys of a tenant share the hash tag `{tenant_id}`. Redis errors propagate as
`redis.exceptions.RedisError`; the caller decides between fail-open and fail-closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.livestate.base import LiveStateBackend, TenantView
from gateway.livestate.broadcast import Broadcast, Bus
from gateway.livestate.budgets import Budgets, ReserveResult, SpendState
from gateway.livestate.keys import KeyLayout
from gateway.livestate.leases import LeaseResult, Leases
from gateway.livestate.monitors import MonitorClaims
from gateway.livestate.ratelimits import Headroom, StartRate, StartResult, UpstreamHeadroom
from gateway.livestate.scripts import ScriptRunner
from gateway.pools import RedisClient


class LiveState(LiveStateBackend):
    """Leases, start rates, budgets, broadcasts and upstream headroom shared by all replicas (Redis)."""

    def __init__(
        self, redis: RedisClient, prefix: str = "voxgate:", instance_id: str = "", clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.redis = redis
        self.instance_id = instance_id
        self.keys = KeyLayout(prefix)
        self._scripts = ScriptRunner(redis)
        self._leases = Leases(self._scripts, self.keys)
        self._monitors = MonitorClaims(self._scripts, self.keys, instance_id)
        self._starts = StartRate(self._scripts, self.keys, instance_id)
        self._budgets = Budgets(self._scripts, self.keys)
        self._headroom = UpstreamHeadroom(self._scripts, self.keys)
        self._bus = Bus(redis, self.keys.channel, instance_id, clock=clock)  # its reconnect backoff

    async def load_scripts(self) -> None:
        """Register the Lua scripts once (they are also reloaded on NOSCRIPT)."""
        await self._scripts.load()

    async def ping(self) -> None:
        await self.redis.ping()

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
        """Take a lease if the tenant holds fewer than `limit` (None = no cap); renews a held one.
        With `model`, also within `model_limit` leases of that model (see the base class)."""
        return await self._leases.acquire(tenant_id, session_id, limit, ttl_s, now, model, model_limit)

    async def heartbeat(self, sessions: Iterable[tuple[str, str]], ttl_s: float, now: float) -> list[tuple[str, str]]:
        """Renew leases in one round trip; returns the (tenant, session) pairs that no longer hold one."""
        return await self._leases.heartbeat(sessions, ttl_s, now)

    async def release_session(self, tenant_id: str, session_id: str) -> bool:
        """Give a lease back (idempotent); True if it was held."""
        return await self._leases.release(tenant_id, session_id)

    async def active_sessions(self, tenant_id: str, now: float) -> int:
        """Live leases of the tenant, after reaping expired ones."""
        return await self._leases.active(tenant_id, now)

    async def active_model_sessions(self, tenant_id: str, model: str, now: float) -> int:
        """Live leases of the tenant counted under `model`, after reaping expired ones."""
        return await self._leases.active_of_model(tenant_id, model, now)

    async def reap_expired(self, now: float) -> list[tuple[str, str]]:
        """Reap expired leases and reservations of every tenant; each reaped session is returned once."""
        return await self._leases.reap_expired(now)

    # -- call monitor claims ----------------------------------------------------------------

    async def claim_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        """Own the call's sideband monitor if no live claim of another replica holds it (ours is renewed)."""
        return await self._monitors.claim(tenant_id, call_id, ttl_s, now, take=True)

    async def renew_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        """Extend our live claim; False if it lapsed or another replica holds it."""
        return await self._monitors.claim(tenant_id, call_id, ttl_s, now, take=False)

    async def release_monitor(self, tenant_id: str, call_id: str) -> bool:
        """Give our claim back (idempotent); False if we did not hold it."""
        return await self._monitors.release(tenant_id, call_id)

    async def monitor_taken(self, tenant_id: str, call_id: str, now: float) -> bool:
        """Another replica holds a live claim on the call (a drained replica's successor)."""
        return await self._monitors.taken(tenant_id, call_id, now)

    # -- session start rate ------------------------------------------------------------------

    async def take_start(self, tenant_id: str, per_minute: int, now: float) -> StartResult:
        """Count a session start if fewer than `per_minute` happened in the last 60 s."""
        return await self._starts.take(tenant_id, per_minute, now)

    # -- budgets -----------------------------------------------------------------------------

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
        """Hold `amount` micro-USD iff spent + reserved + amount <= limit in each configured window.

        `forced` (a response that already started upstream) holds it even when it does not fit;
        `granted` still says whether it fitted."""
        return await self._budgets.reserve(
            tenant_id, reservation_id, amount, daily_limit, monthly_limit, now, ttl_s, forced
        )

    async def settle(self, tenant_id: str, reservation_id: str, actual: int, now: float) -> SpendState:
        """Release the reservation (if still held) and add `actual` to spent, once per reservation id."""
        return await self._budgets.settle(tenant_id, reservation_id, actual, now)

    async def spend_with_marker(self, tenant_id: str, now: float) -> tuple[SpendState, str]:
        return await self._budgets.spend_with_marker(tenant_id, now)

    async def add_history(self, tenant_id: str, since: str, day_sum: int, month_sum: int, now: float) -> bool:
        return await self._budgets.add_history(tenant_id, since, day_sum, month_sum, now)

    async def forget_spend(self, tenant_id: str, now: float) -> None:
        """Mark the tenant's day/month counters unknown (e.g. after a settle failed to reach Redis),
        so the next `rebuild_spend` recomputes them from the ledger."""
        await self._budgets.forget(tenant_id, now)

    async def tenant_view(self, tenant_id: str, now: float) -> TenantView:
        """`spend`, `active_sessions` and `headroom` in one pipelined round trip (admission's read)."""
        spend_call, windows = self._budgets.spend_call(tenant_id, now)
        spend, active, headroom = await self._scripts.run_many(
            [spend_call, self._leases.count_call(tenant_id, now)], reads=[self._headroom.read_command]
        )
        return TenantView(self._budgets.parse_spend(spend, windows), int(active), self._headroom.parse(headroom, now))

    # -- broadcasts --------------------------------------------------------------------------

    async def publish(self, kind: str, tenant_id: str, detail: dict[str, Any] | None = None) -> int:
        """Tell every replica (e.g. "budget_exhausted", "policy_changed"); returns receivers."""
        return await self._bus.publish(kind, tenant_id, detail)

    def subscribe(self, ready: asyncio.Event | None = None) -> AsyncIterator[Broadcast]:
        """Broadcasts from every replica (this one included, see `origin_instance`), forever."""
        return self._bus.subscribe(ready)

    # -- upstream headroom -------------------------------------------------------------------

    async def record_headroom(self, tokens_limit: int, tokens_remaining: int, reset_seconds: float, now: float) -> None:
        """Store the org's token headroom from a `rate_limits.updated` (the newest snapshot wins)."""
        await self._headroom.record(tokens_limit, tokens_remaining, reset_seconds, now)

    async def headroom(self, now: float) -> Headroom | None:
        """The latest snapshot, or None if there is none or it is older than its reset time."""
        return await self._headroom.read(now)
