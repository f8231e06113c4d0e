"""Rate limits as pure math: a token bucket and a sliding-window log.

Both take the state and `now` and return `(allowed, new_state, retry_after_s)`. A refused
call returns the state unchanged, so asking again at `now + retry_after_s` succeeds (when
nothing else took in between). Refill is computed exactly (fractions), and stored token
counts are rounded down, so a bucket never grants more than `capacity + rate·Δt` in any
interval of length Δt. `retry_after_s` is rounded up to 1/1024 s, the grid a shell's
timers and the `retry-after-ms` header can honour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

RETRY_GRID: Final = 1024  # retry_after is a multiple of 1/1024 s


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A bucket of `capacity` tokens refilled at `refill_per_s`; `tokens` as of `updated_at`."""

    capacity: int
    refill_per_s: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, capacity: int, refill_per_s: float, now: float) -> TokenBucket:
        return cls(capacity, refill_per_s, float(capacity), now)


def _round_down(value: Fraction) -> float:
    result = float(value)
    return math.nextafter(result, -math.inf) if Fraction(result) > value else result


def _retry_after(needed: Fraction) -> float:
    """`needed` seconds rounded up to the 1/1024 s grid (exactly representable)."""
    return math.ceil(needed * RETRY_GRID) / RETRY_GRID


def available(state: TokenBucket, now: float) -> Fraction:
    """Tokens in the bucket at `now` (exact); time never runs backwards."""
    elapsed = max(Fraction(0), Fraction(now) - Fraction(state.updated_at))
    return min(Fraction(state.capacity), Fraction(state.tokens) + elapsed * Fraction(state.refill_per_s))


def take(state: TokenBucket, now: float, n: int = 1) -> tuple[bool, TokenBucket, float]:
    """Take `n` tokens at `now`.

    Allowed: `(True, bucket_after, 0.0)`. Refused: `(False, state, retry_after_s)` where
    `retry_after_s` is the earliest time (on the 1/1024 s grid) at which the same call
    succeeds, or `inf` if it never can (`n > capacity`, or no refill).
    """
    n = max(0, n)
    have = available(state, now)
    if have >= n:
        after = TokenBucket(state.capacity, state.refill_per_s, _round_down(have - n), max(now, state.updated_at))
        return True, after, 0.0
    if n > state.capacity or state.refill_per_s <= 0:
        return False, state, math.inf
    # Refill is computed from the unchanged state, so count the time from `updated_at`.
    needed_at = Fraction(state.updated_at) + (n - Fraction(state.tokens)) / Fraction(state.refill_per_s)
    return False, state, _retry_after(max(Fraction(0), needed_at - Fraction(now)))


def window_take(
    log: tuple[float, ...], now: float, limit: int, window_s: float = 60.0
) -> tuple[bool, tuple[float, ...], float]:
    """A sliding-window log: at most `limit` events in any window of `window_s` seconds.

    An event at time `t` counts while `now - t < window_s`. Allowed: `(True, log + now, 0)`.
    Refused: `(False, pruned log, seconds until the oldest counted event leaves)`.
    """
    live = tuple(t for t in log if now - t < window_s)
    if limit <= 0:
        return False, live, math.inf
    if len(live) < limit:
        return True, (*live, now), 0.0
    oldest = sorted(live)[len(live) - limit]
    return False, live, max(0.0, oldest + window_s - now)
