"""The concurrency leases of translation calls (docs/translation.md#webrtc-calls).

A placed call counts against the tenant's `max_concurrent_sessions` and, under its model,
`max_concurrent_sessions_per_model` from its admission until it is booked: its lease is the one
admission took. voxgate carries no connection of the call, so no live session renews it;
instead every replica's sweep renews the leases of all active calls (their rows in
`translation_calls`) every third of the lease TTL. A call thus keeps its slot while any replica
runs, also after the replica that placed it died, and loses it when it is booked (the booking
replica gives it back; a sweep that settles a booking gives it back again) or, if nobody gives
it back, at most one lease TTL later, when it is reaped.

A lease found gone while its call is still active (Redis restarted, every replica was down
longer than the TTL) is taken back uncapped and counted under its model again: the call is
live upstream, so it holds a slot whatever Redis says.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from gateway.services import GatewayServices
from gateway.translation.call_store import TranslationCallStore

log = logging.getLogger("voxgate.translation")


class CallLeases:
    """Renews and gives back the leases of translation calls, for one process's sweep."""

    def __init__(self, services: GatewayServices, store: TranslationCallStore) -> None:
        self.services = services
        self.store = store
        self._last_beat: float | None = None

    @property
    def beat_every(self) -> float:
        return self.services.enforcement.beat_every

    async def release(self, tenant_id: str, session_id: str) -> None:
        """Give the call's lease back (idempotent; queued and retried if Redis does not answer)."""
        try:
            await self.services.enforcement.release(tenant_id, session_id)
        except Exception:  # never fails an end path: the lease lapses by itself at worst
            log.exception("giving back the lease of translation session %s failed", session_id)

    async def beat_if_due(self) -> None:
        """Renew the leases of every active call if a third of the lease TTL has passed."""
        now = self.services.clock.monotonic()
        if self._last_beat is not None and now - self._last_beat < self.beat_every * 0.9:  # rounds jitter
            return
        self._last_beat = now
        await self.beat()

    async def beat(self) -> None:
        """Renew the leases of every active call in one round trip; take back the ones gone."""
        enforcement = self.services.enforcement
        active = await self.store.active_leases()
        if not active:
            return
        models = {(tenant_id, session_id): model for tenant_id, session_id, model in active}
        try:
            lost = await enforcement.state.heartbeat(models.keys(), enforcement.lease_ttl, self.services.clock.time())
        except RedisError:
            enforcement.store_failed()
            raise
        if lost:
            await self._take_back([(key, models[key]) for key in lost if key in models])

    async def _take_back(self, lost: list[tuple[tuple[str, str], str]]) -> None:
        """Re-acquire, uncapped, the leases of calls still active; one booked meanwhile is given back."""
        still = {(t, s) for t, s, _ in await self.store.active_leases()}
        todo = [(key, model) for key, model in lost if key in still]
        if not todo:
            return
        log.warning("leases of %d active translation calls had lapsed; re-acquired them", len(todo))
        enforcement = self.services.enforcement
        await asyncio.gather(
            *(
                enforcement.state.acquire_session(
                    tenant_id, session_id, None, enforcement.lease_ttl, self.services.clock.time(), model=model
                )
                for (tenant_id, session_id), model in todo
            )
        )
        after = {(t, s) for t, s, _ in await self.store.active_leases()}
        await asyncio.gather(*(self.release(*key) for key, _ in todo if key not in after))
