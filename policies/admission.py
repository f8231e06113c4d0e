"""Admission of a new session: a pure decision over a snapshot of shared state.

The shell gathers an `AdmissionSnapshot` (from Redis, or memory in a single replica),
calls `decide_admission`, and turns a `Refuse` into an HTTP response before the upgrade.
Checks run cheapest-and-most-permanent first; the first that fails decides:

| status | `code` | `type` | retry-after |
|---|---|---|---|
| 403 | `model_not_allowed` | `invalid_request_error` | — (retrying cannot help) |
| 403 | `model_not_priced` | `invalid_request_error` | — (the price table has no price for it) |
| 429 | `concurrency_limit_exceeded` | `rate_limit_error` | 1 s (the tenant's cap, or its cap for this model) |
| 429 | `session_rate_limit_exceeded` | `rate_limit_error` | until a start leaves the window |
| 429 | `budget_exhausted` | `insufficient_quota` | until the next UTC day/month |
| 429 | `upstream_capacity` | `rate_limit_error` | upstream's remaining reset time |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from policies.actions import RateLimitsRecord
from policies.budget import (
    BudgetLimits,
    BudgetState,
    Window,
    effective_output_ceiling,
    exhausted_windows,
    seconds_until_reset,
    worst_case_cost_micro_usd,
)
from policies.policy import TenantPolicy
from policies.prices.table import Basis, PriceTable
from policies.pricing import micro_to_usd
from policies.ratelimit import window_take

START_WINDOW_S: Final = 60.0
UPSTREAM_RESERVE_FRACTION: Final = 0.02  # keep 2% of the org's token limit free
CONCURRENCY_RETRY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class AdmissionSnapshot:
    """Shared state for one tenant (and the org's upstream headroom) as of `now`."""

    active_sessions: int = 0
    # No per-model count: a model's cap (`max_concurrent_sessions_per_model`) is enforced only when
    # the session takes its lease (gateway/session/leases.py, atomically in Redis), which refuses
    # with `model_concurrency_refusal`; a count read here could only be staler than the lease.
    recent_starts: tuple[float, ...] = ()  # session start times (sliding-window log)
    budget: BudgetState = field(default_factory=BudgetState)
    upstream: RateLimitsRecord | None = None  # the latest `rate_limits.updated` seen org-wide


@dataclass(frozen=True, slots=True)
class Admit:
    """Admit the session; `recent_starts` is the log with this start recorded."""

    recent_starts: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse before the upgrade with this OpenAI-shaped error."""

    status: int
    code: str
    message: str
    type: str = "rate_limit_error"
    retry_after: float | None = None
    param: str | None = None


def decide_admission(
    policy: TenantPolicy,
    model: str,
    snapshot: AdmissionSnapshot,
    now: float,
    prices: PriceTable | None = None,
    basis: Basis = "models",
) -> Admit | Refuse:
    """Admit or refuse a new session for `model` under `policy`.

    With `prices`, the model must be priced (unless the table prices unknown models at its
    ceiling) and the budget must cover one worst-case first response; without, any headroom
    at all admits. A session billed by time (`basis` "durations": GPT-Live, translation) has
    no first response: any headroom admits, and its governor reserves time windows after.
    """
    if not policy.allows_model(model):
        return Refuse(
            403,
            "model_not_allowed",
            f"Model '{model}' is not allowed by this tenant's policy (see the policy's 'models' list).",
            type="invalid_request_error",
            param="model",
        )
    if prices is not None and not prices.admits(model, basis):
        return Refuse(
            403,
            "model_not_priced",
            f"Model '{model}' has no price in this gateway's price table, so its usage cannot be metered "
            "(the operator can add it with VOXGATE_PRICE_FILE).",
            type="invalid_request_error",
            param="model",
        )
    cap = policy.max_concurrent_sessions
    if cap is not None and snapshot.active_sessions >= cap:
        return concurrency_refusal(snapshot.active_sessions, cap)
    starts = snapshot.recent_starts
    if policy.session_starts_per_minute is not None:
        allowed, starts, retry = window_take(starts, now, policy.session_starts_per_minute, START_WINDOW_S)
        if not allowed:
            return Refuse(
                429,
                "session_rate_limit_exceeded",
                f"Too many new sessions: the limit is {policy.session_starts_per_minute} per minute.",
                retry_after=retry,
            )
    else:
        starts = (*starts, now)
    budget = _budget_refusal(policy, model, snapshot.budget, now, prices if basis == "models" else None)
    if budget is not None:
        return budget
    upstream = _upstream_refusal(policy, model, snapshot.upstream, now)
    if upstream is not None:
        return upstream
    return Admit(starts)


def concurrency_refusal(active: int, cap: int) -> Refuse:
    """The refusal when the tenant's live sessions reach `max_concurrent_sessions`."""
    return Refuse(
        429,
        "concurrency_limit_exceeded",
        f"This tenant already has {active} active sessions (limit {cap}).",
        retry_after=CONCURRENCY_RETRY_S,
    )


def model_concurrency_refusal(model: str, active: int, cap: int, param: str | None = "model") -> Refuse:
    """The refusal when the tenant's sessions of `model` reach `max_concurrent_sessions_per_model`:
    the code the tenant-wide cap uses, and `param` naming the model."""
    return Refuse(
        429,
        "concurrency_limit_exceeded",
        f"This tenant already has {active} active sessions of model '{model}' (limit {cap} for this model).",
        retry_after=CONCURRENCY_RETRY_S,
        param=param,
    )


def _budget_refusal(
    policy: TenantPolicy, model: str, state: BudgetState, now: float, prices: PriceTable | None
) -> Refuse | None:
    limits = BudgetLimits.from_policy(policy.budget)
    if not limits.limited:
        return None
    need = 0
    if prices is not None:
        price, _ = prices.price_for(model)
        need = worst_case_cost_micro_usd(
            effective_output_ceiling(None, None, policy.max_output_tokens, model), 0, price
        )
    windows = exhausted_windows(state, limits, need)
    if not windows:
        return None
    retry = max(seconds_until_reset(now, window) for window in windows)
    return Refuse(
        429,
        "budget_exhausted",
        budget_exhausted_message(windows, state, limits, need),
        type="insufficient_quota",
        retry_after=retry,
    )


def budget_exhausted_message(windows: tuple[Window, ...], state: BudgetState, limits: BudgetLimits, need: int) -> str:
    """What filled each window: money spent and money reserved by responses still running."""
    figures = []
    for window in windows:
        if window == "day":
            label, spent, reserved, limit = "daily", state.spent_day, state.reserved_day, limits.daily_micro_usd
        else:
            label, spent, reserved, limit = "monthly", state.spent_month, state.reserved_month, limits.monthly_micro_usd
        label = f"{label} " if len(windows) > 1 else ""
        figures.append(
            f"{label}${micro_to_usd(spent)} spent + ${micro_to_usd(reserved)} reserved for responses "
            f"in progress, of ${micro_to_usd(limit or 0)}"
        )
    which = " and ".join("daily" if w == "day" else "monthly" for w in windows)
    verb = "budgets are" if len(windows) > 1 else "budget is"
    room = f"; one more response may cost up to ${micro_to_usd(need)}" if need > 0 else ""
    return f"This tenant's {which} {verb} exhausted: {'; '.join(figures)}{room}."


def upstream_token_threshold(policy: TenantPolicy, model: str, limit: int) -> int:
    """Tokens upstream must have left to admit: one worst-case response, or 2% of the limit."""
    worst = effective_output_ceiling(None, None, policy.max_output_tokens, model)
    return max(worst, math.ceil(limit * UPSTREAM_RESERVE_FRACTION))


def _upstream_refusal(policy: TenantPolicy, model: str, record: RateLimitsRecord | None, now: float) -> Refuse | None:
    if record is None:
        return None
    for limit in record.limits:
        resets_in = record.observed_at + limit.reset_seconds - now
        if resets_in <= 0:
            continue  # that window has already refilled
        if limit.name == "tokens":
            short = limit.remaining < upstream_token_threshold(policy, model, limit.limit)
        elif limit.name == "requests":
            short = limit.remaining < 1
        else:
            continue
        if short:
            return Refuse(
                429,
                "upstream_capacity",
                f"The upstream organisation is nearly out of {limit.name} "
                f"({limit.remaining} of {limit.limit} left); retry after the reset.",
                retry_after=resets_in,
            )
    return None
