"""A `LiveSession` outside a gateway: its effects over an in-memory live state, its own clock."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from gateway.clock import SYSTEM_CLOCK, Clock, Timer
from gateway.ledger.writer import LedgerWriter, SessionStarted
from gateway.livestate import MemoryLiveState
from gateway.metrics import GatewayMetrics
from gateway.session.effects import SessionEffects
from gateway.session.enforcement import Enforcement
from gateway.session.live import LiveSession
from policies.governor import SessionGovernor
from policies.policy import UNRESTRICTED
from policies.prices.builtin import DEFAULT_PRICE_TABLE


class TickingClock:
    """A `Clock` whose time comes from `now()` (a test's own sequence of instants)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def time(self) -> float:
        return self._now()

    def monotonic(self) -> float:
        return self._now()

    async def sleep(self, seconds: float) -> None:
        await SYSTEM_CLOCK.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return SYSTEM_CLOCK.call_later(delay, callback)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return SYSTEM_CLOCK.timeout(seconds)


def live_session(
    governor: SessionGovernor,
    ledger: LedgerWriter,
    started: SessionStarted,
    *,
    clock: Clock = SYSTEM_CLOCK,
    metrics: GatewayMetrics | None = None,
) -> LiveSession:
    """A `LiveSession` whose shared-state effects run on a fresh `MemoryLiveState`."""
    shared = Enforcement(MemoryLiveState(), None, None, ledger, DEFAULT_PRICE_TABLE, lambda: ())  # type: ignore[arg-type]
    effects = SessionEffects(
        shared, started.tenant_id, started.session_id, governor.policy or UNRESTRICTED, metrics, clock
    )
    return LiveSession(governor, effects, started, clock=clock)
