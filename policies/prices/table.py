"""`PriceTable`: which price a model gets, under which version, and what an unknown model costs.

A table is shared by every session, so it is read-only once built. Each model's rates come
from exactly one source (the built-in table or the operator's price file), and the rows they
price carry that source's version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final, Literal, TypeVar

from policies.prices.rates import (
    STANDARD,
    DurationPrice,
    ModelPrice,
    TierMultiplier,
    TierPrice,
    TokenPrice,
    TranscriptionPrice,
)

# The key reported when an unknown model is priced at the table's ceiling.
CEILING_KEY: Final = "ceiling"
# Appended to the version stamped on a row priced at the ceiling, so reports can find them.
CEILING_VERSION_SUFFIX: Final = "+ceiling"

UnknownModels = Literal["refuse", "ceiling"]
# The billing bases, by the mapping that prices them.
Basis = Literal["models", "transcription", "responses", "durations"]
_SNAPSHOT_SUFFIX = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_P = TypeVar("_P")
# The service tier a Responses call without one is billed at: the model's own rates, always.
DEFAULT_TIER: Final = "default"


@dataclass(frozen=True, slots=True)
class TieredPrice:
    """How a Responses call at a service tier is priced: `rates` times `multiplier`, and the
    version to stamp on its row (suffixed `CEILING_VERSION_SUFFIX` when the model or the tier
    is unknown and the call was priced at the table's ceiling)."""

    rates: TokenPrice
    multiplier: TierMultiplier
    version: str

    @property
    def flagged(self) -> bool:
        return self.version.endswith(CEILING_VERSION_SUFFIX)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """A versioned set of prices, one mapping per billing basis.

    A model name appears in one mapping at most. `model_versions` names the version of the
    models whose rates came from another table (an operator's price file); the rest are
    `version`'s. `unknown_models` says whether a session may start on a model the table does
    not price ("refuse", the default) or is priced at the ceiling ("ceiling"). Usage that
    arrives for an unknown model anyway (a transcription model chosen mid-session) is always
    priced at the ceiling, the highest rate of every bucket, and its rows are flagged.

    Responses calls are priced per service tier: `tier_prices[model][tier]` (explicit rates,
    `tier_rates`, or a multiple, `tier_multiples`: two fields, so no field's type is a union of
    records, which the app's dependency injection cannot inspect; from the model's own source),
    else the table-wide multiple
    `service_tiers[tier]` (`tier_versions` names the version of those that came from another
    table). `default` is always the model's own rates; a tier priced nowhere is billed at the
    dearest multiple and flagged like an unknown model.
    """

    version: str
    models: Mapping[str, ModelPrice]
    transcription: Mapping[str, TranscriptionPrice]
    responses: Mapping[str, TokenPrice] = field(default_factory=dict)
    durations: Mapping[str, DurationPrice] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)
    unknown_models: UnknownModels = "refuse"
    service_tiers: Mapping[str, TierMultiplier] = field(default_factory=dict)
    tier_rates: Mapping[str, Mapping[str, TokenPrice]] = field(default_factory=dict)
    tier_multiples: Mapping[str, Mapping[str, TierMultiplier]] = field(default_factory=dict)
    tier_versions: Mapping[str, str] = field(default_factory=dict)
    _ceiling: ModelPrice = field(init=False, repr=False, compare=False)
    _transcription_ceiling: TranscriptionPrice = field(init=False, repr=False, compare=False)
    _responses_ceiling: TokenPrice = field(init=False, repr=False, compare=False)
    _duration_ceiling: DurationPrice = field(init=False, repr=False, compare=False)
    _tier_ceiling: TierMultiplier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version:
            raise ValueError("PriceTable.version must be a non-empty string")
        if not self.models:
            raise ValueError("PriceTable.models must not be empty")
        if not self.transcription:
            raise ValueError("PriceTable.transcription must not be empty")
        if self.unknown_models not in ("refuse", "ceiling"):
            raise ValueError(f"PriceTable.unknown_models must be 'refuse' or 'ceiling', got {self.unknown_models!r}")
        seen: dict[str, str] = {}
        for section in ("models", "transcription", "responses", "durations"):
            for name in getattr(self, section):
                if name in seen:
                    raise ValueError(f"PriceTable: {name!r} is priced twice ({seen[name]} and {section})")
                seen[name] = section
        for name in self.model_versions:
            if name not in seen:
                raise ValueError(f"PriceTable.model_versions: {name!r} is not priced by this table")
        self._check_tiers()
        # Read-only copies: a table is shared by every session and must not change under them.
        tiers = {DEFAULT_TIER: STANDARD, **self.service_tiers}
        object.__setattr__(self, "service_tiers", tiers)
        for section in ("tier_rates", "tier_multiples"):
            own = {name: MappingProxyType(dict(p)) for name, p in getattr(self, section).items() if p}
            object.__setattr__(self, section, own)
        for section in (
            "models",
            "transcription",
            "responses",
            "durations",
            "model_versions",
            "service_tiers",
            "tier_rates",
            "tier_multiples",
            "tier_versions",
        ):
            object.__setattr__(self, section, MappingProxyType(dict(getattr(self, section))))
        multiples = [*tiers.values()]
        multiples += [m for own in self.tier_multiples.values() for m in own.values()]
        object.__setattr__(self, "_tier_ceiling", _dearest(multiples))
        object.__setattr__(self, "_ceiling", _ceiling(ModelPrice, self.models.values()))
        per_minute = [TranscriptionPrice(per_minute=p.per_minute) for p in self.durations.values()]
        object.__setattr__(
            self, "_transcription_ceiling", _transcription_ceiling([*self.transcription.values(), *per_minute])
        )
        token_rates = [*self.responses.values(), *(_text_rates(p) for p in self.models.values())]
        object.__setattr__(self, "_responses_ceiling", _ceiling(TokenPrice, token_rates))
        # A table without per-minute prices has no such sessions to admit; its ceiling is then 0.
        durations = [*self.durations.values(), DurationPrice(per_minute=0)]
        object.__setattr__(self, "_duration_ceiling", _duration_ceiling(durations))

    def price_for(self, model: str) -> tuple[ModelPrice, str]:
        """The realtime price for `model`, and the key it resolved to.

        Exact name, else the name without a dated snapshot suffix (`gpt-realtime-2025-08-28`
        is `gpt-realtime`), else the ceiling under `CEILING_KEY`.
        """
        return _lookup(model, self.models, self._ceiling)

    def is_known(self, model: str) -> bool:
        """Whether `price_for(model)` finds the model itself rather than the ceiling."""
        return _resolve(model, self.models) is not None

    def admits(self, model: str, basis: Basis = "models") -> bool:
        """Whether a session may start on `model`, billed on `basis` (a realtime session by its
        `models` rates, a Live session by its `durations`): it is priced there, or the table
        lets unknown models in at the ceiling."""
        if self.unknown_models == "ceiling":
            return True
        if basis == "transcription":
            return self.transcription_is_known(model)
        return _resolve(model, getattr(self, basis)) is not None

    def transcription_price_for(self, model: str) -> tuple[TranscriptionPrice, str]:
        """As `price_for`, over the transcription models, then the per-minute ones (`durations`:
        `whisper-1` is billed by the minute of audio). The ceiling has the highest token rates
        and the highest per-minute rate of the table."""
        key = _resolve(model, self.transcription)
        if key is not None:
            return self.transcription[key], key
        key = _resolve(model, self.durations)
        if key is not None:
            return TranscriptionPrice(per_minute=self.durations[key].per_minute), key
        return self._transcription_ceiling, CEILING_KEY

    def transcription_is_known(self, model: str) -> bool:
        return self.transcription_price_for(model)[1] != CEILING_KEY

    def responses_price_for(self, model: str) -> tuple[TokenPrice, str]:
        """The Responses price for `model` (a Live delegation's backend); unknown ones get the
        highest input, cached-input and output rates of the table, realtime text rates included."""
        return _lookup(model, self.responses, self._responses_ceiling)

    def responses_tier_price_for(self, model: str, tier: str | None) -> TieredPrice:
        """How a Responses call on `model` at service `tier` (None: `default`) is priced.

        The model's own price for the tier, else the table-wide multiple, else (a tier this
        table does not price) the dearest multiple of the table over the dearest of the model's
        rates, flagged: an unknown tier is never priced as the default one."""
        rates, key = self.responses_price_for(model)
        version = self.version_for(key)
        name = DEFAULT_TIER if tier is None else tier
        own = self.tier_prices_of(key)
        price = own.get(name)
        if isinstance(price, TokenPrice):
            return TieredPrice(price, STANDARD, version)
        if isinstance(price, TierMultiplier):
            return TieredPrice(rates, price, version)
        multiplier = self.service_tiers.get(name)
        if multiplier is None:
            dearest = _ceiling(TokenPrice, [rates, *(p for p in own.values() if isinstance(p, TokenPrice))])
            return TieredPrice(dearest, self._tier_ceiling, self.version + CEILING_VERSION_SUFFIX)
        if multiplier != STANDARD and key != CEILING_KEY and self.tier_versions.get(name, self.version) != version:
            version = self.version  # rates and multiple from different sources: this table combined them
        return TieredPrice(rates, multiplier, version)

    @property
    def tier_prices(self) -> Mapping[str, Mapping[str, TierPrice]]:
        """Every model's own tier prices, explicit rates and multiples together."""
        names = dict.fromkeys([*self.tier_rates, *self.tier_multiples])
        return MappingProxyType({name: self.tier_prices_of(name) for name in names})

    def tier_prices_of(self, model_key: str) -> Mapping[str, TierPrice]:
        return {**self.tier_multiples.get(model_key, {}), **self.tier_rates.get(model_key, {})}

    def prices_tier(self, tier: str) -> bool:
        """Whether `tier` has a table-wide price (a model may also price tiers of its own)."""
        return tier in self.service_tiers

    def duration_price_for(self, model: str) -> tuple[DurationPrice, str]:
        """The per-minute price of a Live or translation session on `model`; unknown ones get
        the highest active and standby rates of the table."""
        return _lookup(model, self.durations, self._duration_ceiling)

    def version_for(self, key: str) -> str:
        """The version to stamp on a row priced under `key` (what a `*_price_for` returned).

        The ceiling's rows carry `version` + `CEILING_VERSION_SUFFIX`: flagged, never silent.
        """
        if key == CEILING_KEY:
            return self.version + CEILING_VERSION_SUFFIX
        return self.model_versions.get(key, self.version)

    @property
    def ceiling(self) -> ModelPrice:
        """The highest rate of every bucket across all realtime models: never below any of them."""
        return self._ceiling

    def _check_tiers(self) -> None:
        for tier, multiplier in self.service_tiers.items():
            if not isinstance(tier, str) or not tier or not isinstance(multiplier, TierMultiplier):
                raise ValueError(f"PriceTable.service_tiers: {tier!r} must name a TierMultiplier")
            if tier == DEFAULT_TIER and multiplier != STANDARD:
                raise ValueError("PriceTable.service_tiers: 'default' is the model's own rates (1/1)")
        for section, kind in (("tier_rates", TokenPrice), ("tier_multiples", TierMultiplier)):
            for name, own in getattr(self, section).items():
                if name not in self.responses:
                    raise ValueError(f"PriceTable.{section}: {name!r} is not priced as a Responses model")
                for tier, price in own.items():
                    if tier == DEFAULT_TIER or not isinstance(price, kind):
                        raise ValueError(f"PriceTable.{section}[{name!r}]: {tier!r} cannot be priced by {price!r}")
        for name in set(self.tier_rates) & set(self.tier_multiples):
            if set(self.tier_rates[name]) & set(self.tier_multiples[name]):
                raise ValueError(f"PriceTable: a tier of {name!r} has both explicit rates and a multiple")
        for tier in self.tier_versions:
            if tier not in self.service_tiers:
                raise ValueError(f"PriceTable.tier_versions: {tier!r} is not a priced service tier")


def _dearest(multiples: Iterable[TierMultiplier]) -> TierMultiplier:
    dearest = STANDARD
    for multiple in multiples:
        if not multiple <= dearest:
            dearest = multiple
    return dearest


def _lookup(model: str, prices: Mapping[str, _P], ceiling: _P) -> tuple[_P, str]:
    key = _resolve(model, prices)
    return (prices[key], key) if key is not None else (ceiling, CEILING_KEY)


def _resolve(model: str, keys: Mapping[str, object]) -> str | None:
    if model in keys:
        return model
    base = _SNAPSHOT_SUFFIX.sub("", model)
    return base if base != model and base in keys else None


def _text_rates(price: ModelPrice) -> TokenPrice:
    return TokenPrice(text_in=price.text_in, cached_text_in=price.cached_text_in, text_out=price.text_out)


def _ceiling(kind: type[_P], prices: Iterable[_P]) -> _P:
    rows = list(prices)
    return kind(**{f.name: max(getattr(row, f.name) for row in rows) for f in fields(kind)})  # type: ignore[arg-type]


def _transcription_ceiling(prices: Iterable[TranscriptionPrice]) -> TranscriptionPrice:
    rows = list(prices)
    rates: dict[str, int | None] = {}
    for f in fields(TranscriptionPrice):
        present = [value for row in rows if (value := getattr(row, f.name)) is not None]
        rates[f.name] = max(present) if present else None
    return TranscriptionPrice(**rates)


def _duration_ceiling(prices: Iterable[DurationPrice]) -> DurationPrice:
    rows = list(prices)
    return DurationPrice(
        per_minute=max(row.per_minute for row in rows), standby_per_minute=max(row.standby_rate for row in rows)
    )
