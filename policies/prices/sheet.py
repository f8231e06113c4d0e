"""The price file's form (`VOXGATE_PRICE_FILE`), as plain data: parsed, checked, laid over a table.

```yaml
version: "acme-2026-12"          # stamped on every ledger row these prices compute
unknown_models: refuse           # or "ceiling"; optional, "refuse" by default
service_tiers: {flex: "0.5", priority: "2"}   # optional: Responses tiers as multiples of a model's rates
models:
  gpt-5.5:                                                         # USD per 1M tokens
    input: "1.25"
    cached_input: "0.125"
    output: "10.00"
    service_tiers:               # optional, Responses models only: this model's own tier prices
      flex: {input: "0.625", cached_input: "0.0625", output: "5.00"}   # explicit rates
      priority: "2.5"                                                  # or a multiple
  gpt-live-1: {per_minute: "0.05", standby_per_minute: "0.02"}        # USD per minute
```

A model's basis follows from its keys (`RATE_SHAPES`). A tier's multiple is an exact decimal
string; `default` is always the model's own rates and cannot be set. Reading the YAML is the shell's
(`gateway.price_file`); this module never touches a file. Errors are `ValueError`s that
name the dotted key at fault, e.g. `models.gpt-live-1.per_minute`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, get_args

from policies.prices.rates import DurationPrice, ModelPrice, TierMultiplier, TierPrice, TokenPrice, TranscriptionPrice
from policies.prices.table import CEILING_VERSION_SUFFIX, DEFAULT_TIER, PriceTable, UnknownModels
from policies.pricing import MICRO_PER_USD, micro_to_usd, usd_to_micro

Rates = ModelPrice | TranscriptionPrice | TokenPrice | DurationPrice

# File key -> field, per basis. Token rates are USD per 1M tokens, `*per_minute` USD per minute.
_REALTIME_KEYS: Final = {
    "input": "text_in",
    "cached_input": "cached_text_in",
    "output": "text_out",
    "audio_input": "audio_in",
    "cached_audio_input": "cached_audio_in",
    "audio_output": "audio_out",
    "image_input": "image_in",
    "cached_image_input": "cached_image_in",
}
_RESPONSES_KEYS: Final = {"input": "text_in", "cached_input": "cached_text_in", "output": "text_out"}
_TRANSCRIPTION_KEYS: Final = {"input": "text_in", "audio_input": "audio_in", "output": "text_out"}

# (basis, record type, required keys -> fields, optional keys -> fields); the first whose
# required keys are all present and that has every key given decides a model's basis.
RATE_SHAPES: Final[tuple[tuple[str, type[Rates], Mapping[str, str], Mapping[str, str]], ...]] = (
    ("a realtime model", ModelPrice, _REALTIME_KEYS, {}),
    ("a Responses model", TokenPrice, _RESPONSES_KEYS, {}),
    ("a transcription model", TranscriptionPrice, _TRANSCRIPTION_KEYS, {"per_minute": "per_minute"}),
    ("a per-minute model", DurationPrice, {"per_minute": "per_minute"}, {"standby_per_minute": "standby_per_minute"}),
)
RATE_KEYS: Final = tuple(dict.fromkeys(k for _, _, req, opt in RATE_SHAPES for k in (*req, *opt)))
_TOP_KEYS: Final = ("version", "unknown_models", "service_tiers", "models")
TIERS_KEY: Final = "service_tiers"


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """An operator's prices: some models' rates under one version, laid over a table."""

    version: str
    models: Mapping[str, Rates]
    unknown_models: UnknownModels = "refuse"
    service_tiers: Mapping[str, TierMultiplier] = field(default_factory=dict)
    tier_prices: Mapping[str, Mapping[str, TierPrice]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("models", "service_tiers", "tier_prices"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def over(self, table: PriceTable) -> PriceTable:
        """`table` with this sheet's models in place of its own (the sheet wins per model, on
        every basis), stamped with this sheet's version; the rest keep their own version."""
        sections: dict[str, dict[str, Any]] = {s: {} for s in ("models", "transcription", "responses", "durations")}
        versions: dict[str, str] = {}
        for section, prices in sections.items():
            for name, price in getattr(table, section).items():
                if name not in self.models:
                    prices[name] = price
                    versions[name] = table.model_versions.get(name, table.version)
        for name, price in self.models.items():
            sections[_SECTION_OF[type(price)]][name] = price
        # Tier prices travel with their model; table-wide multiples are replaced per tier.
        tier_prices = {name: own for name, own in table.tier_prices.items() if name not in self.models}
        tier_prices.update(self.tier_prices)
        tier_rates = {n: {t: p for t, p in own.items() if isinstance(p, TokenPrice)} for n, own in tier_prices.items()}
        tier_multiples = {
            n: {t: p for t, p in own.items() if isinstance(p, TierMultiplier)} for n, own in tier_prices.items()
        }
        tier_versions = {
            tier: table.tier_versions.get(tier, table.version)
            for tier in table.service_tiers
            if tier not in self.service_tiers and tier != DEFAULT_TIER
        }
        return PriceTable(
            version=self.version,
            models=sections["models"],
            transcription=sections["transcription"],
            responses=sections["responses"],
            durations=sections["durations"],
            model_versions={name: v for name, v in versions.items() if v != self.version},
            unknown_models=self.unknown_models,
            service_tiers={**table.service_tiers, **self.service_tiers},
            tier_rates=tier_rates,
            tier_multiples=tier_multiples,
            tier_versions={tier: v for tier, v in tier_versions.items() if v != self.version},
        )


_SECTION_OF: Final[Mapping[type, str]] = {
    ModelPrice: "models",
    TranscriptionPrice: "transcription",
    TokenPrice: "responses",
    DurationPrice: "durations",
}


def parse_price_sheet(data: object) -> PriceSheet:
    """Check and convert a parsed price file; raises ValueError naming the dotted key at fault.

    Amounts are decimal strings (`"0.05"`) or whole numbers; floats (unquoted `0.05` in YAML),
    negatives, exponents and amounts finer than one micro-USD are refused, and so is every
    key this form does not define.
    """
    if not isinstance(data, Mapping):
        raise ValueError("expected a mapping with version and models")
    _reject_unknown("", data, _TOP_KEYS)
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f'version: expected a non-empty string such as "acme-2026-12", got {version!r}')
    if version.endswith(CEILING_VERSION_SUFFIX):  # that suffix flags rows priced at the ceiling
        raise ValueError(f"version: must not end with {CEILING_VERSION_SUFFIX!r}, got {version!r}")
    unknown = data.get("unknown_models", "refuse")
    if unknown not in get_args(UnknownModels):
        raise ValueError(f"unknown_models: expected refuse or ceiling, got {unknown!r}")
    section = data.get("models")
    if not isinstance(section, Mapping):
        raise ValueError("models: expected a mapping of model name to rates")
    models: dict[str, Rates] = {}
    tier_prices: dict[str, Mapping[str, TierPrice]] = {}
    for name, entry in section.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"models: model names must be non-empty strings, got {name!r}")
        where = f"models.{name}"
        own = entry.get(TIERS_KEY) if isinstance(entry, Mapping) else None
        if own is not None:
            entry = {key: value for key, value in entry.items() if key != TIERS_KEY}
        models[name] = _parse_rates(where, entry)
        if own is not None:
            if not isinstance(models[name], TokenPrice):
                raise ValueError(f"{where}.{TIERS_KEY}: only a Responses model (input, cached_input, output) has tiers")
            tier_prices[name] = _parse_tiers(f"{where}.{TIERS_KEY}", own, rates_allowed=True)
    tiers = _parse_tiers(TIERS_KEY, data.get(TIERS_KEY, {}), rates_allowed=False)
    multiples = {tier: price for tier, price in tiers.items() if isinstance(price, TierMultiplier)}
    return PriceSheet(
        version=version, models=models, unknown_models=unknown, service_tiers=multiples, tier_prices=tier_prices
    )


def _parse_tiers(where: str, entry: object, *, rates_allowed: bool) -> dict[str, TierPrice]:
    """Tier name -> a multiple (decimal string) or, per model, explicit Responses rates."""
    if not isinstance(entry, Mapping):
        raise ValueError(f'{where}: expected a mapping of service tier to a multiple such as "0.5"')
    tiers: dict[str, TierPrice] = {}
    for tier, value in entry.items():
        if not isinstance(tier, str) or not tier.strip():
            raise ValueError(f"{where}: tier names must be non-empty strings, got {tier!r}")
        if tier == DEFAULT_TIER:
            raise ValueError(f"{where}.{tier}: the default tier is the model's own rates and cannot be set")
        if isinstance(value, Mapping) and rates_allowed:
            _reject_unknown(f"{where}.{tier}", value, tuple(_RESPONSES_KEYS))
            price = _parse_rates(f"{where}.{tier}", value)
            if not isinstance(price, TokenPrice):
                raise ValueError(f"{where}.{tier}: input, cached_input and output required")
            tiers[tier] = price
        else:
            tiers[tier] = _multiple(f"{where}.{tier}", value)
    return tiers


def _multiple(where: str, value: object) -> TierMultiplier:
    """An exact multiple from a decimal string (`"0.5"`): micro-units over a million, reduced."""
    micro = usd_to_micro(value, where)
    divisor = math.gcd(micro, MICRO_PER_USD) or 1
    return TierMultiplier(micro // divisor, MICRO_PER_USD // divisor)


def dump_price_sheet(table: PriceTable) -> dict[str, object]:
    """The whole of `table` in the price file's form: a starting point for an operator's file."""
    models: dict[str, dict[str, object]] = {}
    for section in ("models", "transcription", "responses", "durations"):
        for name, price in getattr(table, section).items():
            models[name] = dict(_dump_rates(price))
    for name, own in table.tier_prices.items():
        models[name][TIERS_KEY] = {tier: _dump_tier(price) for tier, price in own.items()}
    data: dict[str, object] = {"version": table.version}
    if table.unknown_models != "refuse":
        data["unknown_models"] = table.unknown_models
    tiers = {tier: _dump_tier(m) for tier, m in table.service_tiers.items() if tier != DEFAULT_TIER}
    if tiers:
        data[TIERS_KEY] = tiers
    data["models"] = models
    return data


def _dump_tier(price: TierPrice) -> object:
    if isinstance(price, TokenPrice):
        return _dump_rates(price)
    micro, rest = divmod(price.numerator * MICRO_PER_USD, price.denominator)
    if rest:
        raise ValueError(f"a tier multiple of {price.numerator}/{price.denominator} has no exact decimal form")
    return micro_to_usd(micro)


def _parse_rates(where: str, entry: object) -> Rates:
    if not isinstance(entry, Mapping):
        raise ValueError(f'{where}: expected a mapping of rates such as {{per_minute: "0.05"}}')
    _reject_unknown(where, entry, RATE_KEYS)
    if not entry:
        raise ValueError(f"{where}: no rates given")
    amounts = {key: usd_to_micro(value, f"{where}.{key}") for key, value in entry.items()}
    given = set(amounts)
    for _, kind, required, optional in RATE_SHAPES:
        if set(required) <= given <= set(required) | set(optional):
            keys = {**required, **optional}
            return kind(**{keys[key]: amount for key, amount in amounts.items()})
    raise ValueError(f"{where}: {_shape_error(given)}")


def _shape_error(given: set[str]) -> str:
    """Which keys are missing for the nearest basis, or that the keys mix bases."""
    near = [
        (len(set(req) - given), basis, sorted(set(req) - given, key=RATE_KEYS.index))
        for basis, _, req, opt in RATE_SHAPES
        if given <= set(req) | set(opt)
    ]
    if not near:
        return f"the rates {', '.join(sorted(given, key=RATE_KEYS.index))} belong to different kinds of model"
    _, basis, missing = min(near, key=lambda n: n[0])
    return f"{', '.join(missing)} required for {basis}"


def _dump_rates(price: Rates) -> dict[str, str]:
    for _, kind, required, optional in RATE_SHAPES:
        if type(price) is kind:
            by_field = {f: key for key, f in {**required, **optional}.items()}
            return {
                by_field[f.name]: micro_to_usd(value)
                for f in fields(price)
                if (value := getattr(price, f.name)) is not None and f.name in by_field
            }
    raise TypeError(f"not a price record: {price!r}")


def _reject_unknown(where: str, entry: Mapping[object, object], allowed: tuple[str, ...]) -> None:
    prefix = f"{where}." if where else ""
    for key in entry:
        if key not in allowed:
            raise ValueError(f"{prefix}{key}: unknown key (expected one of {', '.join(allowed)})")
