"""The live-state interface: what every backend (Redis across replicas, memory in one process) offers.

`docs/live-state.md` states the semantics; `tests/test_livestate_contract.py` runs one suite over
every backend. Every method that takes `now` (Unix seconds) uses it for all timing. A backend that
cannot reach its store raises `redis.exceptions.RedisError` (the memory one never does), so callers
handle one error type whatever the backend.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.livestate.broadcast import Broadcast
from gateway.livestate.budgets import ReserveResult, SpendState
from gateway.livestate.leases import LeaseResult
from gateway.livestate.ratelimits import Headroom, StartResult
from gateway.livestate.rebuild import rebuild_spend


@dataclass(frozen=True, slots=True)
class TenantView:
    """What admission reads before deciding: the tenant's spend, its live leases, the org's headroom."""

    spend: SpendState
    active_sessions: int
    headroom: Headroom | None


class LiveStateBackend(abc.ABC):
    """Leases, monitor claims, start rates, budgets, broadcasts and upstream headroom (docs/live-state.md)."""

    instance_id: str

    async def load_scripts(self) -> None:  # noqa: B027 - optional hook, a no-op for backends without scripts
        """Prepare the backend once at start (Redis: register the Lua scripts)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `RedisError` if the store does not answer."""

    # -- concurrency leases ------------------------------------------------------------------

    @abc.abstractmethod
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

        With `model`, the lease also counts under that model, granted only if the tenant holds
        fewer than `model_limit` leases of it (None = no per-model cap); a held lease of another
        (or no) model moves to it on the same terms. Without, a held lease keeps its model."""

    @abc.abstractmethod
    async def heartbeat(self, sessions: Iterable[tuple[str, str]], ttl_s: float, now: float) -> list[tuple[str, str]]:
        """Renew leases in one step; returns the (tenant, session) pairs that no longer hold one."""

    @abc.abstractmethod
    async def release_session(self, tenant_id: str, session_id: str) -> bool:
        """Give a lease back (idempotent); True if it was held."""

    @abc.abstractmethod
    async def active_sessions(self, tenant_id: str, now: float) -> int:
        """Live leases of the tenant, after reaping expired ones."""

    @abc.abstractmethod
    async def active_model_sessions(self, tenant_id: str, model: str, now: float) -> int:
        """Live leases of the tenant counted under `model`, after reaping expired ones."""

    @abc.abstractmethod
    async def reap_expired(self, now: float) -> list[tuple[str, str]]:
        """Reap expired leases and reservations of every tenant; each reaped session is returned once."""

    # -- call monitor claims ----------------------------------------------------------------

    @abc.abstractmethod
    async def claim_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        """Own the call's sideband monitor until `now + ttl_s` if no live claim of another replica
        holds it (ours is renewed); True if this replica (`instance_id`) holds it now."""

    @abc.abstractmethod
    async def renew_monitor(self, tenant_id: str, call_id: str, ttl_s: float, now: float) -> bool:
        """Extend our live claim to `now + ttl_s`; False if it lapsed or another replica holds it."""

    @abc.abstractmethod
    async def release_monitor(self, tenant_id: str, call_id: str) -> bool:
        """Give our claim back (idempotent); False if we did not hold it."""

    @abc.abstractmethod
    async def monitor_taken(self, tenant_id: str, call_id: str, now: float) -> bool:
        """Another replica holds a live claim on the call (a drained replica waits for its successor)."""

    # -- session start rate ------------------------------------------------------------------

    @abc.abstractmethod
    async def take_start(self, tenant_id: str, per_minute: int, now: float) -> StartResult:
        """Count a session start if fewer than `per_minute` happened in the last 60 s."""

    # -- budgets -----------------------------------------------------------------------------

    @abc.abstractmethod
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
        `granted` still says whether it fitted. With a limit configured and its window not known,
        nothing is held and `refused_by` is "unknown": rebuild (`rebuild_spend`) and ask again."""

    @abc.abstractmethod
    async def settle(self, tenant_id: str, reservation_id: str, actual: int, now: float) -> SpendState:
        """Release the reservation (if still held) and add `actual` to spent, once per reservation id."""

    @abc.abstractmethod
    async def spend_with_marker(self, tenant_id: str, now: float) -> tuple[SpendState, str]:
        """`spend()` plus the `since` marker a rebuild reads the ledger up to."""

    async def spend(self, tenant_id: str, now: float) -> SpendState:
        """The tenant's spend for the UTC day and month of `now`; `known` False means rebuild first."""
        return (await self.spend_with_marker(tenant_id, now))[0]

    @abc.abstractmethod
    async def add_history(self, tenant_id: str, since: str, day_sum: int, month_sum: int, now: float) -> bool:
        """Add ledger history to the windows still unknown, once; False if `since` moved (retry)."""

    async def rebuild_spend(self, pool: asyncpg.Pool, tenant_id: str, now: float) -> SpendState:
        """Restore unknown day/month counters from the Postgres ledger (adds history once)."""
        return await rebuild_spend(self, pool, tenant_id, now)

    @abc.abstractmethod
    async def forget_spend(self, tenant_id: str, now: float) -> None:
        """Mark the tenant's day/month counters unknown (e.g. after a settle failed to reach the store),
        so the next `rebuild_spend` recomputes them from the ledger. Reservations are kept."""

    async def tenant_view(self, tenant_id: str, now: float) -> TenantView:
        """`spend`, `active_sessions` and `headroom` together (Redis: one round trip, one connection).
        Each part is as exact as its own call; the three are not one atomic snapshot."""
        return TenantView(
            await self.spend(tenant_id, now), await self.active_sessions(tenant_id, now), await self.headroom(now)
        )

    # -- broadcasts --------------------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, kind: str, tenant_id: str, detail: dict[str, Any] | None = None) -> int:
        """Tell every replica (e.g. "budget_exhausted", "policy_changed"); returns receivers."""

    @abc.abstractmethod
    def subscribe(self, ready: asyncio.Event | None = None) -> AsyncIterator[Broadcast]:
        """Broadcasts from every replica (this one included, see `origin_instance`), forever."""

    # -- upstream headroom -------------------------------------------------------------------

    @abc.abstractmethod
    async def record_headroom(self, tokens_limit: int, tokens_remaining: int, reset_seconds: float, now: float) -> None:
        """Store the org's token headroom from a `rate_limits.updated` (the newest snapshot wins)."""

    @abc.abstractmethod
    async def headroom(self, now: float) -> Headroom | None:
        """The latest snapshot, or None if there is none or it is older than its reset time."""
