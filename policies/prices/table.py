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

from policies.prices.rates import DurationPrice, ModelPrice, TokenPrice, TranscriptionPrice

# The key reported when an unknown model is priced at the table's ceiling.
CEILING_KEY: Final = "ceiling"
# Appended to the version stamped on a row priced at the ceiling, so reports can find them.
CEILING_VERSION_SUFFIX: Final = "+ceiling"

UnknownModels = Literal["refuse", "ceiling"]
# The billing bases, by the mapping that prices them.
Basis = Literal["models", "transcription", "responses", "durations"]
_SNAPSHOT_SUFFIX = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_P = TypeVar("_P")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """A versioned set of prices, one mapping per billing basis.

    A model name appears in one mapping at most. `model_versions` names the version of the
    models whose rates came from another table (an operator's price file); the rest are
    `version`'s. `unknown_models` says whether a session may start on a model the table does
    not price ("refuse", the default) or is priced at the ceiling ("ceiling"). Usage that
    arrives for an unknown model anyway (a transcription model chosen mid-session) is always
    priced at the ceiling, the highest rate of every bucket, and its rows are flagged.
    """

    version: str
    models: Mapping[str, ModelPrice]
    transcription: Mapping[str, TranscriptionPrice]
    responses: Mapping[str, TokenPrice] = field(default_factory=dict)
    durations: Mapping[str, DurationPrice] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)
    unknown_models: UnknownModels = "refuse"
    _ceiling: ModelPrice = field(init=False, repr=False, compare=False)
    _transcription_ceiling: TranscriptionPrice = field(init=False, repr=False, compare=False)
    _responses_ceiling: TokenPrice = field(init=False, repr=False, compare=False)
    _duration_ceiling: DurationPrice = field(init=False, repr=False, compare=False)

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
        # Read-only copies: a table is shared by every session and must not change under them.
        for section in ("models", "transcription", "responses", "durations", "model_versions"):
            object.__setattr__(self, section, MappingProxyType(dict(getattr(self, section))))
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
