"""Concurrency leases: a tenant's live sessions, capped across replicas, reaped when not renewed.

Each lease is a member of the tenant's `leases` ZSET scored by its expiry (`now + ttl_s`). An
instance renews all its leases in one round trip (`heartbeat`); a replica that dies stops renewing,
and its leases are reaped at most `ttl_s` later by whoever looks next (acquire, count, or the
periodic `reap_expired`). Reaped sessions are kept in a per-tenant set until `reap_expired`
reports them, so the caller can end their rows in Postgres.

A lease may also count under a model (`max_concurrent_sessions_per_model`): the tenant's
`leases:model` hash names each such lease's model and `leases:per_model` counts them per model;
the lease scripts keep both in step with the `leases` ZSET (release, reaping), so a model's
count is the tenant's live leases of that model, whichever replica took them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.livestate import scripts
from gateway.livestate._util import key_ttl, text
from gateway.livestate.keys import KeyLayout
from gateway.livestate.scripts import ScriptRunner

REAPED_TTL_S = 7 * 86400  # reaped sessions wait this long for a reaper before Redis forgets them
INDEX_IDLE_S = 3600.0  # an empty tenant leaves the reaper's index after this long without activity
_BATCH = 500  # tenants per pipelined round trip in reap_expired


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """Outcome of `acquire_session`: `active` counts the tenant's live leases after the call,
    `model_active` those of the model asked for (0 without one); `refused_by` says which cap
    refused ("tenant" or "model"), None when granted."""

    granted: bool
    active: int
    model_active: int = 0
    refused_by: str | None = None


class Leases:
    def __init__(self, runner: ScriptRunner, keys: KeyLayout) -> None:
        self._run = runner
        self._keys = keys

    async def acquire(
        self,
        tenant_id: str,
        session_id: str,
        limit: int | None,
        ttl_s: float,
        now: float,
        model: str | None = None,
        model_limit: int | None = None,
    ) -> LeaseResult:
        k = self._keys.tenant(tenant_id)
        args: list[scripts.Arg] = [
            session_id,
            -1 if limit is None else limit,
            now,
            now + ttl_s,
            key_ttl(ttl_s),
            REAPED_TTL_S,
            model or "",
            -1 if model_limit is None else model_limit,
        ]
        _, (granted, active, model_active, refused) = await self._run.run_many(
            [
                (scripts.INDEX_TOUCH, [self._keys.tenant_index], [tenant_id, now]),
                (scripts.LEASE_ACQUIRE, [k.leases, k.reaped, k.lease_models, k.model_counts], args),
            ]
        )
        return LeaseResult(bool(granted), int(active), int(model_active), text(refused) or None)

    async def heartbeat(self, sessions: Iterable[tuple[str, str]], ttl_s: float, now: float) -> list[tuple[str, str]]:
        """Renew leases, one round trip; returns the (tenant, session) pairs whose lease is gone."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant_id, session_id in sessions:
            by_tenant[tenant_id].append(session_id)
        tenants = list(by_tenant)
        results = await self._run.run_many(
            [
                (scripts.LEASE_HEARTBEAT, self._heartbeat_keys(t), [now + ttl_s, key_ttl(ttl_s), *by_tenant[t]])
                for t in tenants
            ]
        )
        return [(t, text(s)) for t, lost in zip(tenants, results, strict=True) for s in lost]

    def _heartbeat_keys(self, tenant_id: str) -> list[str]:
        k = self._keys.tenant(tenant_id)
        return [k.leases, k.lease_models, k.model_counts]

    async def release(self, tenant_id: str, session_id: str) -> bool:
        """Drop a lease (and its model's count); True if it was held. Idempotent."""
        k = self._keys.tenant(tenant_id)
        keys = [k.leases, k.reaped, k.lease_models, k.model_counts]
        return bool(await self._run.run(scripts.LEASE_RELEASE, keys, [session_id]))

    def count_call(self, tenant_id: str, now: float) -> scripts.Call:
        """The call `active` makes (to pipeline it with others); its reply is the count."""
        k = self._keys.tenant(tenant_id)
        return scripts.LEASE_COUNT, [k.leases, k.reaped, k.lease_models, k.model_counts], [now, REAPED_TTL_S]

    async def active(self, tenant_id: str, now: float) -> int:
        return int(await self._run.run(*self.count_call(tenant_id, now)))

    async def active_of_model(self, tenant_id: str, model: str, now: float) -> int:
        """Live leases of the tenant counted under `model`, after reaping expired ones."""
        script, keys, args = self.count_call(tenant_id, now)
        _, of_model = await self._run.run(script, keys, [*args, model])
        return int(of_model)

    async def reap_expired(self, now: float) -> list[tuple[str, str]]:
        """Reap every tenant's expired leases and reservations; returns each reaped session once."""
        index = self._keys.tenant_index
        entries = [(text(m), float(s)) async for m, s in self._run.redis.zscan_iter(index)]
        reaped: list[tuple[str, str]] = []
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            results = await self._run.run_many([self._reap_call(tenant, now) for tenant, _ in batch])
            drops: list[scripts.Call] = []
            for (tenant, score), (sessions, leases, reservations) in zip(batch, results, strict=True):
                reaped.extend((tenant, text(s)) for s in sessions)
                if int(leases) == 0 and int(reservations) == 0 and score < now - INDEX_IDLE_S:
                    drops.append((scripts.INDEX_DROP, [index], [tenant, repr(score)]))
            await self._run.run_many(drops)
        return reaped

    def _reap_call(self, tenant_id: str, now: float) -> scripts.Call:
        k = self._keys.tenant(tenant_id)
        keys = [k.leases, k.reaped, k.reservations, k.reservation_expiry, k.reserved, k.lease_models, k.model_counts]
        return scripts.TENANT_REAP, keys, [now, REAPED_TTL_S]
