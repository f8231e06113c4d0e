"""Budgets with reservation, as pure math over an explicit shared state.

A response reserves its worst-case cost before it may start and settles to its real cost
at `response.done`. The tenant's shared counters are a value (`BudgetState`); a shell
keeps one per tenant (in Redis across replicas) and applies these functions atomically.
The overshoot bound these rules guarantee is stated and proven in docs/budgets.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Literal

from policies.policy import BudgetPolicy
from policies.prices.rates import ModelPrice
from policies.pricing import TOKENS_PER_RATE

# Documented maximum output tokens per response (model pages); see realtime-protocol §6.
MODEL_MAX_OUTPUT_TOKENS: Final[Mapping[str, int]] = {
    "gpt-realtime": 4096,
    "gpt-realtime-1.5": 4096,
    "gpt-realtime-mini": 4096,
    "gpt-4o-realtime-preview": 4096,
    "gpt-4o-mini-realtime-preview": 4096,
    "gpt-audio-1.5": 4096,
    "gpt-audio-mini": 4096,
    "gpt-realtime-2": 32768,
    "gpt-realtime-2.1": 32768,
    "gpt-realtime-2.1-mini": 32768,
}
# Unknown models get the largest documented output: a reservation must never be too small.
UNKNOWN_MODEL_MAX_OUTPUT_TOKENS: Final = 32768
_DATED: Final = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}$")

# Rough input-size estimates for tokens added to the context since the last response.
CHARS_PER_TEXT_TOKEN: Final = 3  # real text averages ~4 chars/token; 3 over-estimates
B64_CHARS_PER_AUDIO_TOKEN: Final = 1066  # G.711 at 8 kHz (the densest format): 100 ms = 800 B = 1066 b64 chars
IMAGE_TOKENS: Final = 1536  # an upper estimate for one high-detail input image

Window = Literal["day", "month"]


def model_max_output_tokens(model: str) -> int:
    """The documented output ceiling of `model` (dated snapshots resolve to their base)."""
    if model in MODEL_MAX_OUTPUT_TOKENS:
        return MODEL_MAX_OUTPUT_TOKENS[model]
    base = _DATED.sub("", model)
    if base in MODEL_MAX_OUTPUT_TOKENS:
        return MODEL_MAX_OUTPUT_TOKENS[base]
    if base.startswith("gpt-realtime-2"):
        return 32768
    return UNKNOWN_MODEL_MAX_OUTPUT_TOKENS


def effective_output_ceiling(
    response_value: int | None, session_value: int | None, policy_ceiling: int | None, model: str
) -> int:
    """The most output tokens one response can produce.

    A per-response value replaces the session's for that response; either is capped by the
    policy and by the model's documented maximum. `None` means unbounded ("inf" or unset).
    """
    bound = model_max_output_tokens(model)
    chosen = response_value if response_value is not None else session_value
    for limit in (chosen, policy_ceiling):
        if limit is not None and limit >= 1:
            bound = min(bound, limit)
    return bound


def worst_case_cost_micro_usd(output_tokens: int, input_tokens: int, price: ModelPrice) -> int:
    """Worst-case cost of one response: all output at the dearest output rate, all input at
    the dearest uncached input rate (no cache discount assumed). Rounded up."""
    out_rate = max(price.audio_out, price.text_out)
    in_rate = max(price.text_in, price.audio_in, price.image_in)
    total = max(0, output_tokens) * out_rate + max(0, input_tokens) * in_rate
    return -(-total // TOKENS_PER_RATE)


def item_token_estimate(item: object) -> int:
    """An over-estimate of the input tokens a `conversation.item.create` item adds."""
    if not isinstance(item, Mapping):
        return 0
    tokens = 8  # role/framing overhead
    for key in ("arguments", "output", "name"):
        value = item.get(key)
        if isinstance(value, str):
            tokens += _text_tokens(value)
    content = item.get("content")
    if isinstance(content, list):
        for part in content:
            tokens += _part_tokens(part)
    return tokens


def audio_b64_tokens(b64_chars: int) -> int:
    """Input-audio tokens for `b64_chars` of base64 audio, assuming the densest format."""
    return -(-max(0, b64_chars) // B64_CHARS_PER_AUDIO_TOKEN)


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TEXT_TOKEN)


def _part_tokens(part: object) -> int:
    if not isinstance(part, Mapping):
        return 0
    tokens = 0
    for key in ("text", "transcript"):
        value = part.get(key)
        if isinstance(value, str):
            tokens += _text_tokens(value)
    audio = part.get("audio")
    if isinstance(audio, str):
        tokens += audio_b64_tokens(len(audio))
    if part.get("type") == "input_image":
        tokens += IMAGE_TOKENS
    return tokens


# -- the shared tenant state ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Hard limits in micro-USD (`None` = unlimited) and alert fractions."""

    daily_micro_usd: int | None = None
    monthly_micro_usd: int | None = None
    alert_at: tuple[float, ...] = ()

    @classmethod
    def from_policy(cls, budget: BudgetPolicy) -> BudgetLimits:
        return cls(budget.daily_micro_usd, budget.monthly_micro_usd, tuple(budget.alert_at))

    @property
    def limited(self) -> bool:
        return self.daily_micro_usd is not None or self.monthly_micro_usd is not None


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One tenant's counters for the current day and month, micro-USD."""

    spent_day: int = 0
    spent_month: int = 0
    reserved_day: int = 0
    reserved_month: int = 0


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """`spent` crossed `threshold` * `limit` in `window`."""

    window: Window
    threshold: float
    spent: int
    limit: int


def _committed(state: BudgetState) -> tuple[int, int]:
    return state.spent_day + state.reserved_day, state.spent_month + state.reserved_month


def fits(state: BudgetState, amount: int, limits: BudgetLimits) -> bool:
    """Whether spent + reserved + amount stays within every limit."""
    day, month = _committed(state)
    amount = max(0, amount)
    return (limits.daily_micro_usd is None or day + amount <= limits.daily_micro_usd) and (
        limits.monthly_micro_usd is None or month + amount <= limits.monthly_micro_usd
    )


def _add_reservation(state: BudgetState, amount: int) -> BudgetState:
    return replace(state, reserved_day=state.reserved_day + amount, reserved_month=state.reserved_month + amount)


def try_reserve(state: BudgetState, amount: int, limits: BudgetLimits) -> tuple[bool, BudgetState]:
    """Reserve `amount` if it fits under every limit; otherwise change nothing."""
    amount = max(0, amount)
    if not fits(state, amount, limits):
        return False, state
    return True, _add_reservation(state, amount)


def force_reserve(state: BudgetState, amount: int, limits: BudgetLimits) -> tuple[bool, BudgetState]:
    """Reserve `amount` for a response that already started (server VAD): always recorded.

    Returns whether it fitted; False means the tenant is now over its limit and the
    session that asked must stop (docs/budgets.md).
    """
    amount = max(0, amount)
    within = fits(state, amount, limits)
    return within, _add_reservation(state, amount)


def settle(state: BudgetState, reserved: int, actual: int) -> BudgetState:
    """Replace a reservation of `reserved` by the real cost `actual` (0 on cancel/failure)."""
    reserved, actual = max(0, reserved), max(0, actual)
    return BudgetState(
        spent_day=state.spent_day + actual,
        spent_month=state.spent_month + actual,
        reserved_day=max(0, state.reserved_day - reserved),
        reserved_month=max(0, state.reserved_month - reserved),
    )


def is_exhausted(state: BudgetState, limits: BudgetLimits) -> bool:
    """Whether nothing more may start: spent + reserved has reached a limit."""
    day, month = _committed(state)
    return (limits.daily_micro_usd is not None and day >= limits.daily_micro_usd) or (
        limits.monthly_micro_usd is not None and month >= limits.monthly_micro_usd
    )


def remaining_micro_usd(state: BudgetState, limits: BudgetLimits) -> int | None:
    """Headroom left under the tightest limit (None when unlimited); may be negative."""
    day, month = _committed(state)
    left = [
        limit - used
        for limit, used in ((limits.daily_micro_usd, day), (limits.monthly_micro_usd, month))
        if limit is not None
    ]
    return min(left) if left else None


def crossed_alerts(before: BudgetState, after: BudgetState, limits: BudgetLimits) -> tuple[BudgetAlert, ...]:
    """Alert thresholds that spending (not reservations) crossed going from `before` to `after`."""
    alerts: list[BudgetAlert] = []
    windows: tuple[tuple[Window, int | None, int, int], ...] = (
        ("day", limits.daily_micro_usd, before.spent_day, after.spent_day),
        ("month", limits.monthly_micro_usd, before.spent_month, after.spent_month),
    )
    for window, limit, old, new in windows:
        if limit is None:
            continue
        for threshold in sorted(limits.alert_at):
            mark = math.ceil(threshold * limit)
            if old < mark <= new:
                alerts.append(BudgetAlert(window, threshold, new, limit))
    return tuple(alerts)


def window_keys(now: float) -> tuple[str, str]:
    """The UTC day and month a spend at `now` counts toward (`2026-11-24`, `2026-11`)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m")


def seconds_until_reset(now: float, window: Window) -> float:
    """Seconds from `now` to the start of the next UTC day or month."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp() + 86_400 - now
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp() - now


def exhausted_windows(state: BudgetState, limits: BudgetLimits, amount: int = 0) -> tuple[Window, ...]:
    """The windows that cannot take `amount` more (at least one micro-USD)."""
    day, month = _committed(state)
    needed = max(1, amount)
    out: list[Window] = []
    if limits.daily_micro_usd is not None and day + needed > limits.daily_micro_usd:
        out.append("day")
    if limits.monthly_micro_usd is not None and month + needed > limits.monthly_micro_usd:
        out.append("month")
    return tuple(out)
