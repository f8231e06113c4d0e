"""Budget counters and reservations per tenant, in integer micro-USD, per UTC day and month.

Before a response starts, the caller reserves its worst-case cost; at `response.done` it settles
the real cost. Reservations count against every window (the money will be spent now, whichever
day it was reserved on). A reservation whose holder died expires after `ttl_s` and is reaped.
Counters are "known" when Redis has seen every settle of the window; otherwise the caller
rebuilds them from the Postgres ledger (`rebuild.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.livestate import scripts
from gateway.livestate._util import key_ttl, text
from gateway.livestate.keys import SINCE_TTL_S, BudgetWindows, KeyLayout
from gateway.livestate.scripts import ScriptRunner

SETTLE_DEDUPE_S = 86400.0  # settling the same reservation id twice within this long adds once

RefusedBy = Literal["day", "month", "settled", "unknown"]


@dataclass(frozen=True, slots=True)
class SpendState:
    """A tenant's spend in the UTC day and month containing `now` (micro-USD).

    `reserved_day` and `reserved_month` are both the total of live reservations (a reservation
    counts against every window). `known` is False when a window's counters are missing or
    incomplete (Redis flushed or restarted): call `rebuild_spend` before trusting them.
    """

    day: str
    month: str
    spent_day: int
    spent_month: int
    reserved_day: int
    reserved_month: int
    known: bool = True

    def remaining(self, daily_limit: int | None, monthly_limit: int | None) -> int | None:
        """Headroom left under the configured limits (None if unlimited), never negative."""
        left = [
            limit - spent - reserved
            for limit, spent, reserved in (
                (daily_limit, self.spent_day, self.reserved_day),
                (monthly_limit, self.spent_month, self.reserved_month),
            )
            if limit is not None
        ]
        return max(0, min(left)) if left else None


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """`refused_by` names the window that would be exceeded ("settled": id already settled;
    "unknown": a limited window's counters need a rebuild first, nothing was held)."""

    granted: bool
    state: SpendState
    refused_by: RefusedBy | None = None


@dataclass(frozen=True, slots=True)
class _Reply:
    ok: bool
    detail: str
    state: SpendState
    since: str


class Budgets:
    def __init__(self, runner: ScriptRunner, keys: KeyLayout) -> None:
        self._run = runner
        self._keys = keys

    def _call(
        self, script: scripts.LuaScript, tenant_id: str, now: float, extra: Sequence[scripts.Arg], hold_ttl: int = 0
    ) -> tuple[scripts.Call, BudgetWindows]:
        k = self._keys.tenant(tenant_id)
        w = BudgetWindows.at(now)
        keys = [k.reservations, k.reservation_expiry, k.reserved, k.settled, k.since, k.day(w.day), k.month(w.month)]
        args = [now, w.day_start, w.month_start, w.day_ttl, w.month_ttl, SINCE_TTL_S, hold_ttl, *extra]
        return (script, keys, args), w

    @staticmethod
    def _reply(raw: list[Any], w: BudgetWindows) -> _Reply:
        status, detail, spent_day, spent_month, reserved, known_day, known_month, since = raw
        reserved_total = int(reserved)
        state = SpendState(
            w.day,
            w.month,
            int(spent_day),
            int(spent_month),
            reserved_total,
            reserved_total,
            bool(int(known_day)) and bool(int(known_month)),
        )
        return _Reply(bool(int(status)), text(detail), state, text(since))

    def spend_call(self, tenant_id: str, now: float) -> tuple[scripts.Call, BudgetWindows]:
        """The call `spend` makes (to pipeline it with others); `parse_spend` reads its reply."""
        return self._call(scripts.BUDGET_SPEND, tenant_id, now, [])

    def parse_spend(self, raw: list[Any], w: BudgetWindows) -> SpendState:
        return self._reply(raw, w).state

    async def spend_with_marker(self, tenant_id: str, now: float) -> tuple[SpendState, str]:
        call, w = self.spend_call(tenant_id, now)
        reply = self._reply(await self._run.run(*call), w)
        return reply.state, reply.since

    async def spend(self, tenant_id: str, now: float) -> SpendState:
        return (await self.spend_with_marker(tenant_id, now))[0]

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
        extra: list[scripts.Arg] = [
            reservation_id,
            int(amount),
            _limit(daily_limit),
            _limit(monthly_limit),
            now + ttl_s,
            1 if forced else 0,
        ]
        call, w = self._call(scripts.BUDGET_RESERVE, tenant_id, now, extra, key_ttl(ttl_s))
        _, raw = await self._run.run_many([(scripts.INDEX_TOUCH, [self._keys.tenant_index], [tenant_id, now]), call])
        reply = self._reply(raw, w)
        refused: RefusedBy | None = None
        if not reply.ok and reply.detail in ("day", "month", "settled", "unknown"):
            refused = reply.detail  # type: ignore[assignment]
        return ReserveResult(reply.ok, reply.state, refused)

    async def settle(self, tenant_id: str, reservation_id: str, actual: int, now: float) -> SpendState:
        if actual < 0:
            raise ValueError("actual must be >= 0 micro-USD")
        extra: list[scripts.Arg] = [reservation_id, int(actual), SETTLE_DEDUPE_S, key_ttl(SETTLE_DEDUPE_S)]
        call, w = self._call(scripts.BUDGET_SETTLE, tenant_id, now, extra)
        return self._reply(await self._run.run(*call), w).state

    async def forget(self, tenant_id: str, now: float) -> None:
        """Drop the windows of `now` and the `since` marker (one atomic DEL, one slot)."""
        k = self._keys.tenant(tenant_id)
        w = BudgetWindows.at(now)
        await self._run.redis.delete(k.since, k.day(w.day), k.month(w.month))

    async def add_history(self, tenant_id: str, since: str, day_sum: int, month_sum: int, now: float) -> bool:
        """Add ledger history to the windows still unknown; False if `since` moved (retry)."""
        k = self._keys.tenant(tenant_id)
        w = BudgetWindows.at(now)
        done = await self._run.run(
            scripts.BUDGET_REBUILD,
            [k.since, k.day(w.day), k.month(w.month)],
            [since, day_sum, month_sum, w.day_ttl, w.month_ttl],
        )
        return bool(done)


def _limit(limit: int | None) -> int:
    if limit is not None and limit < 0:
        raise ValueError("limits must be >= 0 micro-USD or None")
    return -1 if limit is None else int(limit)
