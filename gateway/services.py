"""The long-lived objects a gateway process holds, built once in the app's lifespan.

Handlers, plugins and the fast relay reach them through `services_of` (typed), never by
reading the app's state directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import asyncpg
from litestar import Litestar
from litestar.connection import ASGIConnection

from gateway.auth.browser_keys import BrowserKeyChanges
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.ledger.writer import LedgerWriter
from gateway.metrics import GatewayMetrics
from gateway.session.enforcement import Enforcement
from gateway.session.leases import CarriedSession
from gateway.settings import Settings
from gateway.storage.background import BackgroundGate, background_slots
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantDirectory
from policies.prices.table import PriceTable

log = logging.getLogger("voxgate.services")

_STATE_KEY: Final = "services"


class Drainable(Protocol):
    """A live connection the gateway can ask to end (on shutdown or policy)."""

    @property
    def live(self) -> CarriedSession: ...

    def shutdown(self, code: int, reason: str, end_reason: str) -> None: ...


@dataclass
class LiveRegistry:
    """The sessions this process is carrying right now."""

    sessions: set[Drainable] = field(default_factory=set)
    draining: bool = False
    _empty: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, session: Drainable) -> None:
        self.sessions.add(session)
        self._empty.clear()

    def discard(self, session: Drainable) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._empty.set()

    def __len__(self) -> int:
        return len(self.sessions)

    async def drain(self, grace_seconds: float, clock: Clock = SYSTEM_CLOCK) -> None:
        """Refuse new sessions, let live ones finish for `grace_seconds`, then end them (1001)."""
        self.draining = True
        if self.sessions:
            log.info("draining %d live sessions (grace %.1fs)", len(self.sessions), grace_seconds)
            await self._until_empty(grace_seconds, clock)
        for session in list(self.sessions):
            session.shutdown(1001, "gateway shutting down", "gateway_shutdown")
        if not await self._until_empty(SHUTDOWN_WAIT_SECONDS, SYSTEM_CLOCK):
            log.warning("%d sessions did not end after shutdown", len(self.sessions))

    async def _until_empty(self, seconds: float, clock: Clock) -> bool:
        """Wait until no session is left or `seconds` of `clock` have passed; True when none is left."""
        if self.sessions:
            self._empty.clear()
            waits = {asyncio.ensure_future(self._empty.wait()), asyncio.ensure_future(clock.sleep(seconds))}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return not self.sessions


# Sessions told to end at shutdown close their sockets at once; this bounds a stuck one (real time).
SHUTDOWN_WAIT_SECONDS: Final = 5.0


class CallWatcher(Protocol):
    """The port to the process's monitor of WebRTC calls, `gateway.webrtc.sideband.CallsMonitor` (a port
    because this module sits below the transports): a call handed to it is metered and policed over
    a sideband, and its concurrency lease is the monitor's from then on."""

    async def attach(self, call: Any) -> bool:
        """Watch `call` (a `gateway.webrtc.calls_store.Call`) unless a live replica does; True if this one does."""
        ...

    def start(self) -> None:
        """Start renewing its claims, resuming orphaned calls and sweeping expired client secrets."""
        ...

    async def stop(self) -> None: ...


@dataclass
class GatewayServices:
    """What a handler, a transport or a session needs of this process: built once in the app's lifespan,
    reached through `services_of`."""

    settings: Settings
    pool: asyncpg.Pool
    # A `gateway.pools.RedisClient`: one Redis, a Redis Cluster or a Sentinel-managed master. Typed Any
    # because Litestar's signature model (msgspec) inspects this dataclass when the admin API injects
    # it, and msgspec cannot represent a union of two classes.
    redis: Any
    tenants: TenantDirectory
    ledger: LedgerWriter
    prices: PriceTable
    policy_store: PolicyStore
    enforcement: Enforcement
    # Makes `calls_monitor` from these services (the app passes `gateway.webrtc.sideband.CallsMonitor`).
    # A field, not an InitVar: Litestar's signature model (msgspec) cannot inspect a dataclass with one.
    make_calls_monitor: Callable[[GatewayServices], CallWatcher] = field(repr=False)
    live: LiveRegistry = field(default_factory=LiveRegistry)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    clock: Clock = SYSTEM_CLOCK  # every timer of the shell reads and sleeps on this one
    # Browser-token keys changed through this process (admin API): verifiers drop cached keys.
    browser_key_changes: BrowserKeyChanges = field(default_factory=BrowserKeyChanges)
    # VOXGATE_DATABASE_READ_URL's pool, a read replica (set in the lifespan); None = none configured.
    replica_pool: asyncpg.Pool | None = None
    calls_monitor: CallWatcher = field(init=False)  # always there: made by `make_calls_monitor`
    # The share of `pool` background loops may use (`gateway.storage.background`): requests keep the rest.
    background: BackgroundGate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.background = BackgroundGate(self.pool, background_slots(self.settings.database.pool_max))
        self.calls_monitor = self.make_calls_monitor(self)

    @property
    def read_pool(self) -> asyncpg.Pool:
        """Where reports (the costs API) read: the read replica if one is configured, else `pool`.
        A replica lags its primary, so a row committed a moment ago may not be there yet."""
        return self.replica_pool if self.replica_pool is not None else self.pool


def attach_services(app: Litestar, services: GatewayServices) -> None:
    """Make `services` the app's (its lifespan does this once everything is built)."""
    setattr(app.state, _STATE_KEY, services)


def find_services(source: Litestar | ASGIConnection[Any, Any, Any, Any]) -> GatewayServices | None:
    """The app's services, or None before its lifespan built them (or after a failed start)."""
    app = source if isinstance(source, Litestar) else source.app
    services = getattr(app.state, _STATE_KEY, None)
    return services if isinstance(services, GatewayServices) else None


def services_of(source: Litestar | ASGIConnection[Any, Any, Any, Any]) -> GatewayServices:
    """The app's services, typed; a retryable 503 if a request arrives before the lifespan built them."""
    services = find_services(source)
    if services is None:
        raise GatewayError(503, "The gateway is still starting.", code="gateway_starting", retry_after=1)
    return services
