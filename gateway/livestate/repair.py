"""Live-state updates that failed, kept (bounded) and applied once the store answers again.

Nothing that costs money or a lease is dropped silently (docs/live-state.md, "When Redis is
unreachable"):

- a lease release that failed is applied as soon as the store answers (a release is idempotent and
  never resurrects a lease, so applying it late is always safe);
- a settle that failed marks its tenant's counters for a rebuild: once the store answers, the
  reservation it held is released (settled at 0, so the id cannot add twice) and the tenant's
  counters are forgotten and rebuilt from the Postgres ledger, which has the real cost, whether
  or not the tenant still has a session here. A rebuild that may have missed rows (this replica's
  ledger writer had not committed them yet, or the counters came back unknown) is done again;
- after any outage, every tenant with a live session here whose counters came back unknown (a
  restarted Redis) is rebuilt at once.

Both queues are bounded (`MAX_PENDING`); past the bound the oldest entry is given up to its TTL,
logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import RedisError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.livestate.base import LiveStateBackend
from gateway.metrics import counter, gauge

log = logging.getLogger("voxgate.livestate.repair")

MAX_PENDING = 10_000  # failed releases (and, separately, failed settles) kept for a retry
RETRY_INTERVAL_S = 0.25  # how soon after the store answers again a pending repair is applied

# (tenant_id, forget first) -> True if the counters now equal the ledger (False: try again later)
Recount = Callable[[str, bool], Awaitable[bool]]


@dataclass
class RepairStats:
    releases_failed: int = 0  # releases that did not reach the store at first
    releases_retried: int = 0  # ...and were applied later
    releases_left_to_ttl: int = 0  # ...given up (queue overflow): the lease expires by its TTL
    settles_failed: int = 0  # settles that did not reach the store
    holds_left_to_ttl: int = 0  # reservations of failed settles beyond MAX_PENDING: they expire by their TTL
    counters_rebuilt: int = 0  # tenants whose counters were forgotten or found unknown, then rebuilt
    outages: int = 0  # times the store stopped answering and came back


class LiveStateRepairs:
    """The retry queue of one process; `run()` drains it while the store answers."""

    def __init__(
        self,
        state: LiveStateBackend,
        recount: Recount,
        live_tenants: Callable[[], Iterable[str]],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.state = state
        self.stats = RepairStats()
        self._recount = recount
        self._live_tenants = live_tenants
        self._clock = clock
        self._releases: OrderedDict[tuple[str, str], None] = OrderedDict()  # (tenant, session)
        self._settles: OrderedDict[tuple[str, str], None] = OrderedDict()  # (tenant, reservation id)
        self._dirty: set[str] = set()  # tenants whose counters must be forgotten and rebuilt
        self._down = False  # the store failed and has not answered since
        self._wakeup = asyncio.Event()

    # -- what failed ----------------------------------------------------------------------

    def release_failed(self, tenant_id: str, session_id: str) -> None:
        self.stats.releases_failed += 1
        self._releases[(tenant_id, session_id)] = None
        if len(self._releases) > MAX_PENDING:
            (tenant, session), _ = self._releases.popitem(last=False)
            self.stats.releases_left_to_ttl += 1
            log.error("release queue full: the lease of %s (tenant %s) expires by its TTL", session, tenant)
        self.store_failed()

    def settle_failed(self, tenant_id: str, reservation_id: str | None) -> None:
        """A settle (of `reservation_id`'s hold, or of spend without one) did not reach the store."""
        self.stats.settles_failed += 1
        self._dirty.add(tenant_id)
        if reservation_id is not None:
            self._settles[(tenant_id, reservation_id)] = None
        if len(self._settles) > MAX_PENDING:
            (tenant, rid), _ = self._settles.popitem(last=False)
            self.stats.holds_left_to_ttl += 1
            log.error("settle queue full: the hold %s (tenant %s) expires by its TTL", rid, tenant)
        self.store_failed()

    def store_failed(self) -> None:
        """Any live-state call failed: after the store answers, check what the outage may have lost."""
        if not self._down:
            self._down = True
            self.stats.outages += 1
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._releases) + len(self._settles) + len(self._dirty) + int(self._down)

    def metrics(self) -> Iterator[Any]:
        """Prometheus families (for `GatewayMetrics.watch`)."""
        yield counter(
            "voxgate_live_state_repairs",
            "Live-state updates that failed at first, by outcome.",
            ["outcome"],
            {(name,): value for name, value in asdict(self.stats).items()},
        )
        yield gauge("voxgate_live_state_repairs_pending", "Failed live-state updates waiting for Redis.", self.pending)

    # -- applying them --------------------------------------------------------------------

    async def apply(self) -> bool:
        """Apply what is pending; True when nothing is left. Raises nothing for a store still down."""
        try:
            await self.state.ping()
            await self._apply_releases()
            await self._apply_settles()
            if self._down:
                self._down = False  # cleared first: a failure from here on marks it down again
                try:
                    await self._rebuild_unknown()
                except BaseException:
                    self._down = True
                    raise
        except RedisError as exc:
            log.debug("live state still unreachable: %s", exc)
        except Exception as exc:  # Postgres down during a rebuild: keep it pending, retry later
            log.warning("repairing live state failed (%s: %s); retrying", type(exc).__name__, exc)
        return not self.pending

    async def _apply_releases(self) -> None:
        # Applied even past the lease's TTL: a heartbeat in flight at the failure may have renewed it.
        while self._releases:
            tenant, session = next(iter(self._releases))
            await self.state.release_session(tenant, session)
            self._releases.pop((tenant, session), None)
            self.stats.releases_retried += 1

    async def _apply_settles(self) -> None:
        while self._settles:
            tenant, rid = next(iter(self._settles))
            await self.state.settle(tenant, rid, 0, self._clock.time())  # frees the hold; the ledger has the cost
            del self._settles[(tenant, rid)]
        for tenant in list(self._dirty):
            await self._recount_now(tenant, forget=True)

    async def _recount_now(self, tenant: str, forget: bool) -> None:
        # Taken off first: a settle that fails while this runs marks the tenant again.
        self._dirty.discard(tenant)
        try:
            exact = await self._recount(tenant, forget)
        except BaseException:
            self._dirty.add(tenant)
            raise
        self.stats.counters_rebuilt += 1
        if not exact:
            self._dirty.add(tenant)

    async def _rebuild_unknown(self) -> None:
        for tenant in set(self._live_tenants()):
            if not (await self.state.spend(tenant, self._clock.time())).known:
                await self._recount_now(tenant, forget=False)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Apply pending repairs every `RETRY_INTERVAL_S` (of the clock) while there are any; sleep otherwise."""
        while not stopping():
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending and not stopping():
                if await self.apply():
                    break
                await self._clock.sleep(RETRY_INTERVAL_S)
