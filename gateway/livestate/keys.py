"""Where live state lives in Redis: one hash tag per tenant, and the UTC budget windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

WINDOW_MARGIN_S = 2 * 86400  # window keys outlive their window by this much (late settles, rebuilds)
SINCE_TTL_S = 40 * 86400  # longer than any window: an idle tenant's marker lapses, forcing a rebuild


def check_tenant_id(tenant_id: str) -> str:
    """Tenant ids become a Redis Cluster hash tag, so braces would change the slot."""
    if not tenant_id or "{" in tenant_id or "}" in tenant_id:
        raise ValueError(f"invalid tenant id for live state: {tenant_id!r}")
    return tenant_id


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """Every key of one tenant; they share the hash tag `{tenant_id}` (one cluster slot)."""

    base: str  # "<prefix>{<tenant_id>}:"

    @property
    def leases(self) -> str:
        return self.base + "leases"

    @property
    def reaped(self) -> str:
        return self.base + "leases:reaped"

    @property
    def lease_models(self) -> str:
        """Hash: leased session -> the model its per-model cap counts it under."""
        return self.base + "leases:model"

    @property
    def model_counts(self) -> str:
        """Hash: model -> how many entries of `lease_models` name it (kept in step by the lease scripts)."""
        return self.base + "leases:per_model"

    @property
    def starts(self) -> str:
        return self.base + "starts"

    @property
    def reservations(self) -> str:
        return self.base + "resv"

    @property
    def reservation_expiry(self) -> str:
        return self.base + "resv:exp"

    @property
    def reserved(self) -> str:
        return self.base + "resv:total"

    @property
    def settled(self) -> str:
        return self.base + "settled"

    @property
    def since(self) -> str:
        return self.base + "spend:since"

    def monitor(self, call_id: str) -> str:
        """The claim on a call's sideband monitor (gateway.livestate.monitors)."""
        return self.base + "monitor:" + call_id

    def day(self, day: str) -> str:
        return self.base + "spend:day:" + day

    def month(self, month: str) -> str:
        return self.base + "spend:month:" + month


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str

    def tenant(self, tenant_id: str) -> TenantKeys:
        return TenantKeys(f"{self.prefix}{{{check_tenant_id(tenant_id)}}}:")

    @property
    def tenant_index(self) -> str:
        return self.prefix + "index:tenants"

    @property
    def headroom(self) -> str:
        return self.prefix + "upstream:headroom"

    @property
    def channel(self) -> str:
        return self.prefix + "events"


@dataclass(frozen=True, slots=True)
class BudgetWindows:
    """The UTC day and month containing `now`, with their starts and key TTLs (seconds from now)."""

    day: str
    month: str
    day_start: float
    month_start: float
    day_ttl: int
    month_ttl: int

    @classmethod
    def at(cls, now: float) -> BudgetWindows:
        index = int(now // _DAY_S)  # the UTC day: POSIX time has exactly 86400 s a day
        bounds = _last_day[0]
        if bounds.index != index:  # the calendar work runs once a day, not once a call
            bounds = _last_day[0] = _DayBounds.of(index)
        return cls(
            day=bounds.day,
            month=bounds.month,
            day_start=bounds.day_start,
            month_start=bounds.month_start,
            day_ttl=math.ceil(bounds.day_end - now) + WINDOW_MARGIN_S,
            month_ttl=math.ceil(bounds.month_end - now) + WINDOW_MARGIN_S,
        )


_DAY_S = 86400


@dataclass(frozen=True, slots=True)
class _DayBounds:
    """One UTC day's names and the edges of its day and month (epoch seconds)."""

    index: int  # days since the epoch
    day: str
    month: str
    day_start: float
    day_end: float
    month_start: float
    month_end: float

    @classmethod
    def of(cls, index: int) -> _DayBounds:
        day_start = datetime.fromtimestamp(index * _DAY_S, UTC)
        month_start = day_start.replace(day=1)
        month_end = (month_start + timedelta(days=32)).replace(day=1)
        return cls(
            index=index,
            day=day_start.strftime("%Y-%m-%d"),
            month=month_start.strftime("%Y-%m"),
            day_start=day_start.timestamp(),
            day_end=(day_start + timedelta(days=1)).timestamp(),
            month_start=month_start.timestamp(),
            month_end=month_end.timestamp(),
        )


_last_day: list[_DayBounds] = [_DayBounds.of(0)]  # the day `BudgetWindows.at` last saw (one slot)
