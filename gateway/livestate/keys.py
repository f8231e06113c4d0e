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
        t = datetime.fromtimestamp(now, UTC)
        day_start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        month_start = day_start.replace(day=1)
        month_end = (month_start + timedelta(days=32)).replace(day=1)
        day_end = day_start + timedelta(days=1)
        return cls(
            day=day_start.strftime("%Y-%m-%d"),
            month=month_start.strftime("%Y-%m"),
            day_start=day_start.timestamp(),
            month_start=month_start.timestamp(),
            day_ttl=math.ceil(day_end.timestamp() - now) + WINDOW_MARGIN_S,
            month_ttl=math.ceil(month_end.timestamp() - now) + WINDOW_MARGIN_S,
        )
