"""Policy enforcement across replicas: the I/O side of `policies.admission` and the governor.

`Enforcement` (one per process) admits sessions against the tenant's policy and the
shared live state, keeps this replica's concurrency leases (`gateway.session.leases`),
rebuilds budget counters from the ledger, and relays broadcasts (budget exhausted, policy
changed) to the live sessions they concern. It is the shared-state port of every session's
`gateway.session.effects.SessionEffects`.

When Redis is unreachable: new sessions are refused (503 `live_state_unavailable`) or
admitted without shared checks, per the tenant policy's `redis_unavailable`
(`fail_closed` by default); live sessions keep being metered into the Postgres ledger
either way, and their budget checks fall back to granting (logged). Nothing that failed is
dropped: releases are retried and failed settles make the tenant's counters be rebuilt from
the ledger once Redis answers (`gateway.livestate.repair`); a replica never reaps its own
sessions, and after an outage it renews its own leases before reaping anyone's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import asyncpg
from redis.exceptions import RedisError

from gateway.background import stop_tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.ledger.writer import LedgerWriter
from gateway.livestate import LiveStateBackend, SpendState
from gateway.livestate.repair import LiveStateRepairs
from gateway.session.effects import budget_state
from gateway.session.leases import EnforcedSession, LeaseKeeper
from gateway.settings import EnforcementSettings
from policies.actions import RateLimit, RateLimitsRecord
from policies.admission import AdmissionSnapshot, Refuse, decide_admission
from policies.budget import BudgetLimits, is_exhausted
from policies.policy import UNRESTRICTED, TenantPolicy
from policies.prices.table import Basis, PriceTable
from policies.session_config import default_model

if TYPE_CHECKING:
    from gateway.storage.policy_store import PolicyStore

log = logging.getLogger("voxgate.enforcement")

# Before rebuilding counters from the ledger, wait this long at most for this replica's ledger
# writer to commit what it holds, so the rebuild does not miss those rows (docs/live-state.md).
REBUILD_LEDGER_WAIT_S = 2.0
# The shortest gap between two writes of the upstream headroom (`note_headroom`).
HEADROOM_WRITE_SPACING_S = 0.1


@dataclass(frozen=True, slots=True)
class Admission:
    policy: TenantPolicy
    policy_version: int | None
    leased: bool


def _refusal(refuse: Refuse) -> GatewayError:
    return GatewayError(
        refuse.status,
        refuse.message,
        code=refuse.code,
        param=refuse.param,
        type=refuse.type,
        retry_after=refuse.retry_after,
    )


class Enforcement(LeaseKeeper):
    """Admission, leases (`LeaseKeeper`), broadcasts and headroom for one gateway process."""

    def __init__(
        self,
        live_state: LiveStateBackend,
        policies: PolicyStore | None,
        pool: asyncpg.Pool,
        ledger: LedgerWriter,
        prices: PriceTable,
        sessions: Callable[[], Iterable[EnforcedSession]],
        settings: EnforcementSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        repairs = LiveStateRepairs(
            live_state, self._recount, lambda: {s.live.started.tenant_id for s in sessions()}, clock
        )
        super().__init__(live_state, ledger, sessions, repairs, settings or EnforcementSettings(), clock)
        self.policies = policies
        self.pool = pool
        self.prices = prices
        self._tasks: list[asyncio.Task[None]] = []
        self._rebuilds: dict[str, asyncio.Future[SpendState]] = {}
        self._headroom: RateLimitsRecord | None = None  # newest snapshot not yet written
        self._headroom_task: asyncio.Task[None] | None = None

    async def rebuild_spend(self, tenant_id: str, now: float) -> SpendState:
        """Counters from the ledger, after this replica's queued ledger rows are committed (bounded wait).

        Concurrent callers for one tenant (a burst after Redis restarted) share one rebuild."""
        running = self._rebuilds.get(tenant_id)
        if running is None:
            running = self._rebuilds[tenant_id] = asyncio.ensure_future(self._rebuild(tenant_id, now))
            running.add_done_callback(lambda _: self._rebuilds.pop(tenant_id, None))
        return await asyncio.shield(running)

    async def _recount(self, tenant_id: str, forget: bool) -> bool:
        """After an outage: the tenant's counters become the ledger's sums (`forget` first drops what
        Redis holds). True if exact: this replica's ledger rows were all committed before the ledger
        was read, and the counters came back known; otherwise the caller tries again later.
        Rebuilt counters may show the budget spent: this replica's sessions of the tenant are cut then."""
        drained = await self.ledger.drain(REBUILD_LEDGER_WAIT_S)
        now = self.clock.time()
        if forget:
            await self.state.forget_spend(tenant_id, now)
        # Not the shared `rebuild_spend`: one started before the forget may finish before it.
        spend = await self.state.rebuild_spend(self.pool, tenant_id, now)
        if any(s.live.started.tenant_id == tenant_id for s in self._sessions()):
            await self._recheck_budget(tenant_id, self.clock.time())
        if not drained:
            log.warning("rebuilt %s's budget while the ledger writer still held rows; rebuilding again", tenant_id)
        return drained and spend.known

    async def _rebuild(self, tenant_id: str, now: float) -> SpendState:
        if not await self.ledger.drain(REBUILD_LEDGER_WAIT_S):
            log.warning("rebuilding %s's budget while the ledger writer still holds rows", tenant_id)
        return await self.state.rebuild_spend(self.pool, tenant_id, now)

    # -- admission ------------------------------------------------------------------------

    async def policy_for(self, tenant_id: str) -> tuple[TenantPolicy, int | None]:
        if self.policies is None:
            return UNRESTRICTED, None
        effective = await self.policies.effective(tenant_id)
        return effective.policy, effective.version

    async def admit(
        self,
        tenant_id: str,
        session_id: str,
        model: str | None,
        now: float,
        basis: Basis = "models",
        *,
        model_at_start: bool = False,
        counted_model: str | None = None,
    ) -> Admission:
        """Admit a new session or raise an OpenAI-shaped GatewayError (before the upgrade).

        `model` is None for transcription sessions: no realtime model is used, so the
        allowlist does not apply and budgets are checked against `default_model` (any headroom
        admits when the allowlist names no Realtime model).
        `basis` is the price list `model` must be in (`durations` for GPT-Live and translation).
        `model_at_start`: the model arrives after the upgrade (a GPT-Live WebSocket's `session.start`,
        which its governor polices); admission checks everything else.
        `counted_model`: for a transcription session whose request names its transcription model (a
        WebRTC offer, a client secret), the model its lease counts under (`max_concurrent_sessions_per_model`).
        """
        policy, version = await self.policy_for(tenant_id)
        lease_model = None if model is None or model_at_start else model  # what a per-model cap counts
        if model is None:
            lease_model = counted_model
        if model is None:
            model = default_model(policy, self.prices)
            if not self.prices.is_known(model):
                # The allowlist names no Realtime model (an app that only transcribes): no response
                # to price, so any budget headroom admits, as for a session billed by time.
                basis = "transcription"
        if not model_at_start and (not policy.allows_model(model) or not self.prices.admits(model, basis)):
            refused = decide_admission(policy, model, AdmissionSnapshot(), now, self.prices, basis)
            assert isinstance(refused, Refuse)
            raise _refusal(refused)
        try:
            return await self._admit_shared(
                policy, version, tenant_id, session_id, model, now, basis, model_at_start, lease_model
            )
        except RedisError as exc:
            if policy.redis_unavailable == "fail_open":
                log.warning("live state unreachable (%s); admitting %s without shared checks", exc, session_id)
                return Admission(policy, version, leased=False)
            raise GatewayError(
                503,
                "Shared session state is unavailable; retry shortly.",
                code="live_state_unavailable",
                retry_after=1.0,
            ) from None

    async def _admit_shared(
        self,
        policy: TenantPolicy,
        version: int | None,
        tenant_id: str,
        session_id: str,
        model: str,
        now: float,
        basis: Basis = "models",
        model_at_start: bool = False,
        lease_model: str | None = None,
    ) -> Admission:
        view = await self.state.tenant_view(tenant_id, now)  # one round trip: each needs a pooled connection
        spend, headroom = view.spend, view.headroom
        if not spend.known:
            spend = await self.rebuild_spend(tenant_id, now)
        upstream = None
        if headroom is not None:
            limit = RateLimit("tokens", headroom.tokens_limit, headroom.tokens_remaining, headroom.reset_seconds)
            upstream = RateLimitsRecord("", "", headroom.observed_at, (limit,))
        snapshot = AdmissionSnapshot(
            active_sessions=view.active_sessions, budget=budget_state(spend), upstream=upstream
        )
        if model_at_start:  # no model yet: no allowlist, and no first response to reserve for
            decision = decide_admission(replace(policy, models=None), model, snapshot, now)
        else:
            decision = decide_admission(policy, model, snapshot, now, self.prices, basis)
        if isinstance(decision, Refuse):
            raise _refusal(decision)
        # The atomic steps decide races between replicas: start rate, then the lease.
        if policy.session_starts_per_minute is not None:
            start = await self.state.take_start(tenant_id, policy.session_starts_per_minute, now)
            if not start.allowed:
                raise GatewayError(
                    429,
                    f"Too many new sessions: the limit is {policy.session_starts_per_minute} per minute.",
                    code="session_rate_limit_exceeded",
                    type="rate_limit_error",
                    retry_after=start.retry_after_s,
                )
        try:  # the tenant's cap and, with a model, its per-model cap (gateway.session.leases)
            refused = await self.take_lease(tenant_id, session_id, policy, lease_model, now)
        except RedisError:  # the lease may have been taken before the reply was lost: give it back later
            self.repairs.release_failed(tenant_id, session_id)
            raise
        if refused is not None:
            raise _refusal(refused)
        return Admission(policy, version, leased=True)

    # -- upstream headroom ----------------------------------------------------------------

    def note_headroom(self, record: RateLimitsRecord) -> None:
        """Store the org's token headroom from a session's `rate_limits.updated`. Only the newest
        snapshot matters (`record_headroom` keeps the newest), so this process writes the latest one
        it has, one write at a time and at most one per `HEADROOM_WRITE_SPACING_S`, instead of one
        round trip per response (at 200 sessions, 40 a second)."""
        if self._headroom is None or record.observed_at >= self._headroom.observed_at:
            self._headroom = record
        if self._headroom_task is None or self._headroom_task.done():
            self._headroom_task = asyncio.create_task(self._write_headroom(), name="voxgate-headroom")

    async def _write_headroom(self) -> None:
        while self._headroom is not None:
            record, self._headroom = self._headroom, None
            try:
                for lim in record.limits:
                    if lim.name == "tokens":
                        await self.state.record_headroom(
                            lim.limit, lim.remaining, lim.reset_seconds, record.observed_at
                        )
            except RedisError as exc:  # not money: the next `rate_limits.updated` brings a newer one
                log.warning("recording upstream headroom failed: %s", exc)
                self.store_failed()
            await self.clock.sleep(HEADROOM_WRITE_SPACING_S)  # what arrives meanwhile: one write, the newest

    # -- background loops -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="voxgate-lease-heartbeat"),
            asyncio.create_task(self._reaper(), name="voxgate-lease-reaper"),
            asyncio.create_task(self._broadcasts(), name="voxgate-broadcasts"),
            asyncio.create_task(self.repairs.run(lambda: self._stopping), name="voxgate-live-state-repair"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks(self._tasks + ([self._headroom_task] if self._headroom_task is not None else []))
        self._tasks, self._headroom_task = [], None

    async def _broadcasts(self) -> None:
        async for event in self.state.subscribe():
            try:
                await self._on_broadcast(event.kind, event.tenant_id)
            except Exception:
                log.exception("handling broadcast %s for %s failed", event.kind, event.tenant_id)

    async def _on_broadcast(self, kind: str, tenant_id: str) -> None:
        now = self.clock.time()
        if kind == "budget_exhausted":
            for session in self._sessions():
                if session.live.started.tenant_id == tenant_id:
                    await session.live.budget_exhausted(now)
        elif kind == "policy_changed":
            mine = [s for s in self._sessions() if s.live.started.tenant_id == tenant_id]
            if mine:
                policy, _ = await self.policy_for(tenant_id)
                for session in mine:
                    await session.live.policy_changed(policy, now)
        elif kind == "resync":
            for tenant in {s.live.started.tenant_id for s in self._sessions()}:
                await self._recheck_budget(tenant, now)

    async def _recheck_budget(self, tenant_id: str, now: float) -> None:
        policy, _ = await self.policy_for(tenant_id)
        limits = BudgetLimits.from_policy(policy.budget)
        if limits.limited and is_exhausted(budget_state(await self.state.spend(tenant_id, now)), limits):
            await self._on_broadcast("budget_exhausted", tenant_id)
