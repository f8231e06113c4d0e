"""A tenant's policy: what it may use and how much, parsed strictly from plain data.

The same tier-shaped mapping is used everywhere: the YAML tiers file
(`VOXGATE_POLICY_FILE`), `voxgate policy set TENANT --file FILE`, the admin API, and the
stored policy document. `parse_policy` is the one validator; every error names the
offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

AtLimit = Literal["finish_response", "cancel_response"]
MICRO_PER_USD: Final = 1_000_000
# Upper bounds: every value a policy holds must fit what carries it on (a 64-bit integer in
# orjson, Redis and Postgres, OpenAI's 32-bit token counts), or a session would fail on it later.
MAX_POLICY_INT: Final = 2**31 - 1
MAX_POLICY_SECONDS: Final = 10**8  # about three years
MAX_BUDGET_USD: Final = 10**12  # 10**18 micro-USD, inside a signed 64-bit integer


class PolicyError(ValueError):
    """A policy document is invalid; `key` is the dotted path of the offending field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Spend limits in integer micro-USD (`None` = unlimited)."""

    daily_micro_usd: int | None = None
    monthly_micro_usd: int | None = None
    alert_at: tuple[float, ...] = (0.5, 0.8, 1.0)  # fractions of a limit that raise an alert
    at_limit: AtLimit = "finish_response"


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """Everything voxgate enforces for one tenant. `None` means "no limit"."""

    models: frozenset[str] | None = None  # None = any model
    voices: frozenset[str] | None = None  # None = any voice
    tools: frozenset[str] = field(default_factory=frozenset)  # function names / MCP server labels
    max_output_tokens: int | None = None  # ceiling per response
    max_session_tokens: int | None = None
    max_session_seconds: float | None = None
    idle_timeout_seconds: float | None = None
    max_concurrent_sessions: int | None = None
    # Per-model caps on live sessions, across replicas: sorted (model, cap) pairs; a model not listed
    # is capped by `max_concurrent_sessions` only.
    max_concurrent_sessions_per_model: tuple[tuple[str, int], ...] = ()
    session_starts_per_minute: int | None = None
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    redis_unavailable: Literal["fail_open", "fail_closed"] = "fail_closed"  # for NEW sessions only
    expires_after_max_seconds: int = 600  # longest client_secret lifetime a tenant may mint

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def allows_voice(self, voice: str) -> bool:
        return self.voices is None or voice in self.voices

    def allows_tool(self, name: str) -> bool:
        return name in self.tools

    def model_session_cap(self, model: str) -> int | None:
        """How many live sessions of `model` the tenant may hold at once (None = no per-model cap)."""
        for name, cap in self.max_concurrent_sessions_per_model:
            if name == model:
                return cap
        return None


UNRESTRICTED: Final = TenantPolicy(tools=frozenset(), budget=BudgetPolicy(alert_at=()))

_KEYS: Final = frozenset(
    {
        "models",
        "voices",
        "tools",
        "max_output_tokens",
        "max_session_tokens",
        "max_session_seconds",
        "idle_timeout_seconds",
        "max_concurrent_sessions",
        "max_concurrent_sessions_per_model",
        "session_starts_per_minute",
        "budget",
        "redis_unavailable",
        "expires_after_max_seconds",
    }
)
_BUDGET_KEYS: Final = frozenset({"daily_usd", "monthly_usd", "alert_at", "at_limit"})


def _names(value: object, key: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(key, "must be a list of non-empty strings")
    return frozenset(value)


def _optional_int(value: object, key: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(key, "must be an integer or null")
    if value < minimum:
        raise PolicyError(key, f"must be >= {minimum}")
    if value > MAX_POLICY_INT:
        raise PolicyError(key, f"must be <= {MAX_POLICY_INT}")
    return value


def _model_caps(value: object, key: str) -> tuple[tuple[str, int], ...]:
    """`{model: cap}` with non-empty model names and integer caps >= 1 (null or {} = none)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyError(key, "must be a mapping of model name to a maximum number of sessions")
    caps: list[tuple[str, int]] = []
    for model, cap in value.items():
        if not isinstance(model, str) or not model or len(model) > 128:
            raise PolicyError(key, "model names must be non-empty strings of at most 128 characters")
        limit = _optional_int(cap, f"{key}.{model}")
        if limit is None:
            raise PolicyError(f"{key}.{model}", "must be an integer >= 1")
        caps.append((model, limit))
    return tuple(sorted(caps))


def _optional_seconds(value: object, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_POLICY_SECONDS:
        raise PolicyError(key, f"must be a positive number of seconds (at most {MAX_POLICY_SECONDS}) or null")
    return float(value)


def _usd_micro(value: object, key: str) -> int | None:
    """Exact USD -> micro-USD for budget amounts given as int or decimal string/float text."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PolicyError(key, "must be an amount in USD")
    if isinstance(value, int) and value > MAX_BUDGET_USD:  # before `str`, which refuses huge ints
        raise PolicyError(key, f"must be at most {MAX_BUDGET_USD} USD")
    text = repr(value) if isinstance(value, float) else str(value) if isinstance(value, int | str) else None
    if text is None:
        raise PolicyError(key, "must be an amount in USD")
    whole, _, frac = text.strip().partition(".")
    ascii_digits = whole.isascii() and frac.isascii()  # `isdigit` takes "²" and "٣" too
    if not ascii_digits or not whole.isdigit() or (frac and not frac.isdigit()) or len(frac.rstrip("0")) > 6:
        raise PolicyError(key, "must be a non-negative USD amount with at most 6 decimals")
    if len(whole) > 13 or int(whole) > MAX_BUDGET_USD:
        raise PolicyError(key, f"must be at most {MAX_BUDGET_USD} USD")
    return int(whole) * MICRO_PER_USD + int((frac + "000000")[:6] or 0)


def _budget(value: object, key: str) -> BudgetPolicy:
    if value is None:
        return BudgetPolicy(alert_at=())
    if not isinstance(value, Mapping):
        raise PolicyError(key, "must be a mapping")
    unknown = set(value) - _BUDGET_KEYS
    if unknown:
        raise PolicyError(f"{key}.{sorted(unknown)[0]}", "unknown key")
    alert_raw = value.get("alert_at", [0.5, 0.8, 1.0])
    if not isinstance(alert_raw, list | tuple) or not all(
        isinstance(a, int | float) and not isinstance(a, bool) and 0 < a <= 1 for a in alert_raw
    ):
        raise PolicyError(f"{key}.alert_at", "must be a list of fractions in (0, 1]")
    at_limit = value.get("at_limit", "finish_response")
    if at_limit not in ("finish_response", "cancel_response"):
        raise PolicyError(f"{key}.at_limit", "must be finish_response or cancel_response")
    return BudgetPolicy(
        daily_micro_usd=_usd_micro(value.get("daily_usd"), f"{key}.daily_usd"),
        monthly_micro_usd=_usd_micro(value.get("monthly_usd"), f"{key}.monthly_usd"),
        alert_at=tuple(sorted(float(a) for a in alert_raw)),
        at_limit=at_limit,
    )


def parse_policy(data: Mapping[str, Any], where: str = "policy") -> TenantPolicy:
    """Validate a tier-shaped mapping. Unknown keys are errors, never silently ignored."""
    if not isinstance(data, Mapping):
        raise PolicyError(where, "must be a mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise PolicyError(f"{where}.{sorted(unknown)[0]}", "unknown key")
    redis_mode = data.get("redis_unavailable", "fail_closed")
    if redis_mode not in ("fail_open", "fail_closed"):
        raise PolicyError(f"{where}.redis_unavailable", "must be fail_open or fail_closed")
    expires = _optional_int(data.get("expires_after_max_seconds", 600), f"{where}.expires_after_max_seconds", 10)
    return TenantPolicy(
        models=_names(data["models"], f"{where}.models") if data.get("models") is not None else None,
        voices=_names(data["voices"], f"{where}.voices") if data.get("voices") is not None else None,
        tools=_names(data.get("tools") or [], f"{where}.tools"),
        max_output_tokens=_optional_int(data.get("max_output_tokens"), f"{where}.max_output_tokens"),
        max_session_tokens=_optional_int(data.get("max_session_tokens"), f"{where}.max_session_tokens"),
        max_session_seconds=_optional_seconds(data.get("max_session_seconds"), f"{where}.max_session_seconds"),
        idle_timeout_seconds=_optional_seconds(data.get("idle_timeout_seconds"), f"{where}.idle_timeout_seconds"),
        max_concurrent_sessions=_optional_int(data.get("max_concurrent_sessions"), f"{where}.max_concurrent_sessions"),
        max_concurrent_sessions_per_model=_model_caps(
            data.get("max_concurrent_sessions_per_model"), f"{where}.max_concurrent_sessions_per_model"
        ),
        session_starts_per_minute=_optional_int(
            data.get("session_starts_per_minute"), f"{where}.session_starts_per_minute"
        ),
        budget=_budget(data.get("budget"), f"{where}.budget"),
        redis_unavailable=redis_mode,
        expires_after_max_seconds=min(expires or 600, 7200),
    )


_STORED_INTS: Final = (
    "max_output_tokens",
    "max_session_tokens",
    "max_concurrent_sessions",
    "session_starts_per_minute",
    "expires_after_max_seconds",
)
_STORED_SECONDS: Final = ("max_session_seconds", "idle_timeout_seconds")


def parse_stored_policy(data: Mapping[str, Any]) -> TenantPolicy:
    """`parse_policy` for a document stored by an earlier release, which did not bound its numbers:
    a value past today's bound is read as the bound (it meant "no practical limit"), so the tenant
    keeps working and its policy can still be changed. Anything else invalid still raises."""
    doc = dict(data)
    for key in _STORED_INTS:
        doc[key] = _at_most(doc.get(key), MAX_POLICY_INT)
    for key in _STORED_SECONDS:
        doc[key] = _at_most(doc.get(key), MAX_POLICY_SECONDS)
    caps = doc.get("max_concurrent_sessions_per_model")
    if isinstance(caps, Mapping):
        doc["max_concurrent_sessions_per_model"] = {m: _at_most(c, MAX_POLICY_INT) for m, c in caps.items()}
    budget = doc.get("budget")
    if isinstance(budget, Mapping):
        doc["budget"] = {**budget, **{k: _usd_at_most(budget[k]) for k in ("daily_usd", "monthly_usd") if k in budget}}
    return parse_policy({k: v for k, v in doc.items() if k in data})


def _at_most(value: object, maximum: int) -> object:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return maximum if is_number and value > maximum else value  # type: ignore[operator]


def _usd_at_most(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return min(value, MAX_BUDGET_USD)
    if not isinstance(value, str):
        return value
    whole, dot, frac = value.strip().partition(".")
    if not (whole.isdecimal() and (not frac or frac.isdecimal())):
        return value
    # Decimal digits of any script (an earlier release read "٣" as 3 USD) in ASCII; bounded.
    whole, frac = str(int(whole)), "".join(str(int(c)) for c in frac)
    if len(whole) > 13 or int(whole) > MAX_BUDGET_USD:
        return MAX_BUDGET_USD
    return whole + dot + frac


def parse_tiers(data: Mapping[str, Any]) -> dict[str, TenantPolicy]:
    """Validate a tiers document: `{"tiers": {name: policy-mapping, ...}}`."""
    if not isinstance(data, Mapping) or set(data) != {"tiers"} or not isinstance(data["tiers"], Mapping):
        raise PolicyError("tiers", "the file must contain exactly one top-level key 'tiers' holding a mapping")
    if not data["tiers"]:
        raise PolicyError("tiers", "must define at least one tier")
    return {str(name): parse_policy(tier, f"tiers.{name}") for name, tier in data["tiers"].items()}


def policy_to_document(policy: TenantPolicy) -> dict[str, Any]:
    """The inverse of `parse_policy` (USD amounts as exact decimal strings)."""

    def usd(micro: int | None) -> str | None:
        return None if micro is None else f"{micro // MICRO_PER_USD}.{micro % MICRO_PER_USD:06d}"

    b = policy.budget
    return {
        "models": sorted(policy.models) if policy.models is not None else None,
        "voices": sorted(policy.voices) if policy.voices is not None else None,
        "tools": sorted(policy.tools),
        "max_output_tokens": policy.max_output_tokens,
        "max_session_tokens": policy.max_session_tokens,
        "max_session_seconds": policy.max_session_seconds,
        "idle_timeout_seconds": policy.idle_timeout_seconds,
        "max_concurrent_sessions": policy.max_concurrent_sessions,
        "max_concurrent_sessions_per_model": dict(policy.max_concurrent_sessions_per_model),
        "session_starts_per_minute": policy.session_starts_per_minute,
        "budget": {
            "daily_usd": usd(b.daily_micro_usd),
            "monthly_usd": usd(b.monthly_micro_usd),
            "alert_at": list(b.alert_at),
            "at_limit": b.at_limit,
        },
        "redis_unavailable": policy.redis_unavailable,
        "expires_after_max_seconds": policy.expires_after_max_seconds,
    }
