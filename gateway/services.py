"""The long-lived objects a gateway process holds, built once in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis

from gateway.ledger.writer import LedgerWriter
from gateway.metrics import GatewayMetrics
from gateway.session.enforcement import Enforcement
from gateway.session.live import LiveSession
from gateway.settings import Settings
from gateway.storage.policy_store import PolicyStore
from gateway.storage.tenants import TenantDirectory
from policies.pricing import PriceTable

log = logging.getLogger("voxgate.services")


class Drainable(Protocol):
    """A live connection the gateway can ask to end (on shutdown or policy)."""

    live: LiveSession

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

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new sessions, let live ones finish for `grace_seconds`, then end them (1001)."""
        self.draining = True
        if self.sessions:
            log.info("draining %d live sessions (grace %.1fs)", len(self.sessions), grace_seconds)
            deadline = time.monotonic() + grace_seconds
            while self.sessions and time.monotonic() < deadline:
                self._empty.clear()
                try:
                    await asyncio.wait_for(self._empty.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
        for session in list(self.sessions):
            session.shutdown(1001, "gateway shutting down", "gateway_shutdown")
        while self.sessions:
            self._empty.clear()
            try:
                await asyncio.wait_for(self._empty.wait(), 5.0)
            except TimeoutError:
                log.warning("%d sessions did not end after shutdown", len(self.sessions))
                break


@dataclass
class GatewayServices:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    tenants: TenantDirectory
    ledger: LedgerWriter
    prices: PriceTable
    live: LiveRegistry = field(default_factory=LiveRegistry)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    policy_store: PolicyStore | None = None
    enforcement: Enforcement | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    calls_monitor: Any = None  # gateway.webrtc.sideband.CallsMonitor (set in the lifespan)
