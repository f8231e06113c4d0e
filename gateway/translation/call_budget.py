"""A translation call's reservation: the cost of its cap, held in the tenant's shared budget."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from gateway.errors import GatewayError
from gateway.services import GatewayServices
from gateway.session.assembly import shared_state
from policies.budget import BudgetLimits
from policies.policy import TenantPolicy

log = logging.getLogger("voxgate.translation")


async def reserve_cap(
    services: GatewayServices, tenant_id: str, reservation_id: str, amount: int, policy: TenantPolicy, ttl: float
) -> None:
    """Reserve `amount` for `ttl` seconds, else a GatewayError (429 when the budget cannot cover it,
    503 when Redis is unreachable, unless the policy fails open: then nothing is reserved)."""
    limits = BudgetLimits.from_policy(policy.budget)
    state, now = shared_state(services).state, services.clock.time()
    try:
        result = await state.reserve(
            tenant_id, reservation_id, amount, limits.daily_micro_usd, limits.monthly_micro_usd, now, ttl
        )
        if result.refused_by == "unknown":  # counters lost (Redis restarted): rebuild, then once more
            await shared_state(services).rebuild_spend(tenant_id, now)
            result = await state.reserve(
                tenant_id, reservation_id, amount, limits.daily_micro_usd, limits.monthly_micro_usd, now, ttl
            )
    except RedisError:
        if policy.redis_unavailable == "fail_open":
            log.warning("live state unreachable; translation call %s admitted without a reservation", tenant_id)
            return
        raise GatewayError(
            503,
            "Shared session state is unavailable; retry shortly.",
            code="live_state_unavailable",
            retry_after=1.0,
        ) from None
    if not result.granted and result.refused_by != "unknown":
        raise GatewayError(
            429,
            f"The tenant's budget cannot cover this call's cap ({amount} micro-USD).",
            code="budget_exhausted",
            type="insufficient_quota",
        )
