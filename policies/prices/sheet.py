"""The price file's form (`VOXGATE_PRICE_FILE`), as plain data: parsed, checked, laid over a table.

```yaml
version: "acme-2026-12"          # stamped on every ledger row these prices compute
unknown_models: refuse           # or "ceiling"; optional, "refuse" by default
models:
  gpt-5.5: {input: "1.25", cached_input: "0.125", output: "10.00"}   # USD per 1M tokens
  gpt-live-1: {per_minute: "0.05", standby_per_minute: "0.02"}        # USD per minute
```

A model's basis follows from its keys (`RATE_SHAPES`). Reading the YAML is the shell's
(`gateway.price_file`); this module never touches a file. Errors are `ValueError`s that
name the dotted key at fault, e.g. `models.gpt-live-1.per_minute`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final, get_args

from policies.prices.rates import DurationPrice, ModelPrice, TokenPrice, TranscriptionPrice
from policies.prices.table import CEILING_VERSION_SUFFIX, PriceTable, UnknownModels
from policies.pricing import micro_to_usd, usd_to_micro

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
_TOP_KEYS: Final = ("version", "unknown_models", "models")


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """An operator's prices: some models' rates under one version, laid over a table."""

    version: str
    models: Mapping[str, Rates]
    unknown_models: UnknownModels = "refuse"

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

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
        return PriceTable(
            version=self.version,
            models=sections["models"],
            transcription=sections["transcription"],
            responses=sections["responses"],
            durations=sections["durations"],
            model_versions={name: v for name, v in versions.items() if v != self.version},
            unknown_models=self.unknown_models,
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
    for name, entry in section.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"models: model names must be non-empty strings, got {name!r}")
        models[name] = _parse_rates(f"models.{name}", entry)
    return PriceSheet(version=version, models=models, unknown_models=unknown)


def dump_price_sheet(table: PriceTable) -> dict[str, object]:
    """The whole of `table` in the price file's form: a starting point for an operator's file."""
    models: dict[str, dict[str, str]] = {}
    for section in ("models", "transcription", "responses", "durations"):
        for name, price in getattr(table, section).items():
            models[name] = _dump_rates(price)
    data: dict[str, object] = {"version": table.version}
    if table.unknown_models != "refuse":
        data["unknown_models"] = table.unknown_models
    data["models"] = models
    return data


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
