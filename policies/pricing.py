"""Prices in integer micro-USD, and the exact cost of a usage block.

Every rate is micro-USD per 1M tokens (so $4.00 / 1M tokens is `4_000_000`) or micro-USD
per minute. Costs are computed in integers and divided once, rounding half up: no float
ever touches money. See docs/pricing.md for the table's sources and the fallback rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final

from policies.usage import AUDIO_MS_PER_INPUT_TOKEN, ResponseUsage, TranscriptionUsage

MICRO_PER_USD: Final = 1_000_000
TOKENS_PER_RATE: Final = 1_000_000
MS_PER_MINUTE: Final = 60_000
# The key reported when an unknown model is priced at the table's ceiling.
CEILING_KEY: Final = "ceiling"

_SNAPSHOT_SUFFIX = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}$")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Rates of one realtime model, micro-USD per 1M tokens."""

    text_in: int
    cached_text_in: int
    text_out: int
    audio_in: int
    cached_audio_in: int
    audio_out: int
    image_in: int
    cached_image_in: int

    def __post_init__(self) -> None:
        for f in fields(self):
            _require_rate(f"ModelPrice.{f.name}", getattr(self, f.name))


@dataclass(frozen=True, slots=True)
class TranscriptionPrice:
    """Rates of one transcription model: per-1M-token rates, a per-minute rate, or both.

    Token rates are all three set or all None; `per_minute` is micro-USD per minute of audio.
    """

    text_in: int | None = None
    audio_in: int | None = None
    text_out: int | None = None
    per_minute: int | None = None

    def __post_init__(self) -> None:
        token_rates = (self.text_in, self.audio_in, self.text_out)
        if any(rate is None for rate in token_rates) and any(rate is not None for rate in token_rates):
            raise ValueError("TranscriptionPrice: text_in, audio_in and text_out are set together or not at all")
        if self.text_in is None and self.per_minute is None:
            raise ValueError("TranscriptionPrice: needs token rates, a per-minute rate, or both")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _require_rate(f"TranscriptionPrice.{f.name}", value)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """A dated set of prices.

    Unknown model names are priced at the table's ceiling (the highest rate of every bucket
    across all its models) and reported under `CEILING_KEY`, unless `fallback_model`
    names a model to use instead.
    """

    version: str
    models: Mapping[str, ModelPrice]
    transcription: Mapping[str, TranscriptionPrice]
    fallback_model: str | None = None
    _ceiling: ModelPrice = field(init=False, repr=False, compare=False)
    _transcription_ceiling: TranscriptionPrice = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("PriceTable.version must be a non-empty string")
        if not self.models:
            raise ValueError("PriceTable.models must not be empty")
        if not self.transcription:
            raise ValueError("PriceTable.transcription must not be empty")
        if self.fallback_model is not None and self.fallback_model not in self.models:
            raise ValueError(f"PriceTable.fallback_model {self.fallback_model!r} is not in models")
        # Read-only copies: a table is shared by every session and must not change under them.
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "transcription", MappingProxyType(dict(self.transcription)))
        object.__setattr__(self, "_ceiling", _model_ceiling(self.models.values()))
        object.__setattr__(self, "_transcription_ceiling", _transcription_ceiling(self.transcription.values()))

    def price_for(self, model: str) -> tuple[ModelPrice, str]:
        """The price for `model`, and the key it resolved to.

        Exact name, else the name without a dated snapshot suffix (`gpt-realtime-2025-08-28`
        is `gpt-realtime`), else the fallback: `fallback_model` if set, otherwise the ceiling
        under `CEILING_KEY`. Use `is_known` to tell whether the fallback was used.
        """
        key = _resolve(model, self.models)
        if key is not None:
            return self.models[key], key
        if self.fallback_model is not None:
            return self.models[self.fallback_model], self.fallback_model
        return self._ceiling, CEILING_KEY

    def is_known(self, model: str) -> bool:
        """Whether `price_for(model)` finds the model itself rather than the fallback."""
        return _resolve(model, self.models) is not None

    def transcription_price_for(self, model: str) -> tuple[TranscriptionPrice, str]:
        """As `price_for`, over the transcription models; unknown ones get the ceiling."""
        key = _resolve(model, self.transcription)
        if key is not None:
            return self.transcription[key], key
        return self._transcription_ceiling, CEILING_KEY

    def transcription_is_known(self, model: str) -> bool:
        return _resolve(model, self.transcription) is not None

    @property
    def ceiling(self) -> ModelPrice:
        """The highest rate of every bucket across all models: never below any of them."""
        return self._ceiling


def cost_micro_usd(usage: ResponseUsage, price: ModelPrice) -> int:
    """The cost of one response, micro-USD.

    Sums tokens x rate over the eight buckets (uncached and cached text, audio and image
    input; text and audio output), then divides by 1M once, rounding half up.
    """
    total = (
        usage.uncached_text * price.text_in
        + usage.cached_text * price.cached_text_in
        + usage.uncached_audio * price.audio_in
        + usage.cached_audio * price.cached_audio_in
        + usage.uncached_image * price.image_in
        + usage.cached_image * price.cached_image_in
        + usage.output_text * price.text_out
        + usage.output_audio * price.audio_out
    )
    return _div_round_half_up(total, TOKENS_PER_RATE)


def transcription_cost_micro_usd(usage: TranscriptionUsage, price: TranscriptionPrice) -> int:
    """The cost of one transcription, micro-USD, rounded half up.

    Token usage is priced at the token rates; duration usage at `per_minute` pro rata to the
    millisecond. When the usage kind and the price basis differ, audio converts at the
    input-audio token rate (1 token per 100 ms): duration becomes ceil(ms / 100) audio tokens,
    and audio tokens become 100 ms each. A duration has no text, so its output is not billed.
    """
    if usage.kind == "tokens":
        if price.text_in is not None and price.audio_in is not None and price.text_out is not None:
            total = usage.input_text * price.text_in + usage.input_audio * price.audio_in
            total += usage.output_tokens * price.text_out
            return _div_round_half_up(total, TOKENS_PER_RATE)
        assert price.per_minute is not None  # guaranteed by TranscriptionPrice
        duration_ms = usage.input_audio * AUDIO_MS_PER_INPUT_TOKEN
        return _div_round_half_up(duration_ms * price.per_minute, MS_PER_MINUTE)
    if price.per_minute is not None:
        return _div_round_half_up(usage.duration_ms * price.per_minute, MS_PER_MINUTE)
    assert price.audio_in is not None  # guaranteed by TranscriptionPrice
    audio_tokens = -(-usage.duration_ms // AUDIO_MS_PER_INPUT_TOKEN)
    return _div_round_half_up(audio_tokens * price.audio_in, TOKENS_PER_RATE)


def usd_to_micro(value: object, where: str) -> int:
    """Exact micro-USD from a USD amount given as a decimal string (`"4.00"`) or an int.

    Floats are refused (they are not exact); so are negatives, exponents and anything finer
    than one micro-USD. Errors name `where`.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{where}: expected a decimal string such as "4.00" or an int, got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: must not be negative, got {value!r}")
        return value * MICRO_PER_USD
    match = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?", value.strip())
    if match is None:
        raise ValueError(f"{where}: not a non-negative decimal number: {value!r}")
    whole, frac = match.group(1), (match.group(2) or "").rstrip("0")
    if len(frac) > 6:
        raise ValueError(f"{where}: finer than one micro-USD: {value!r}")
    return int(whole) * MICRO_PER_USD + int(frac.ljust(6, "0"))


def micro_to_usd(value: int) -> str:
    """The exact decimal USD string for a micro-USD amount, at least two decimals."""
    whole, frac = divmod(value, MICRO_PER_USD)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}"


_MODEL_KEYS: Final = tuple(f.name for f in fields(ModelPrice))
_TRANSCRIPTION_KEYS: Final = tuple(f.name for f in fields(TranscriptionPrice))
_TABLE_KEYS: Final = ("version", "models", "transcription", "fallback_model")


def load_price_table(data: Mapping[str, object]) -> PriceTable:
    """Build a table from plain data, as parsed from YAML or JSON.

    Shape: `{version, models: {name: {text_in: "4.00", ...}}, transcription: {name: {...}},
    fallback_model?}`. Rates are USD per 1M tokens (or USD per minute for `per_minute`),
    given as decimal strings or ints. Every model rate is required; unknown keys, floats,
    negatives and sub-micro-USD amounts raise ValueError naming the offending key.
    """
    _reject_unknown("price table", data, _TABLE_KEYS)
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError("version: expected a non-empty string")
    fallback = data.get("fallback_model")
    if fallback is not None and not isinstance(fallback, str):
        raise ValueError("fallback_model: expected a string")

    models: dict[str, ModelPrice] = {}
    for name, entry in _section(data, "models").items():
        where = f"models.{name}"
        _reject_unknown(where, entry, _MODEL_KEYS)
        missing = [key for key in _MODEL_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{where}.{missing[0]}: required")
        models[name] = ModelPrice(**{key: usd_to_micro(entry[key], f"{where}.{key}") for key in _MODEL_KEYS})

    transcription: dict[str, TranscriptionPrice] = {}
    for name, entry in _section(data, "transcription").items():
        where = f"transcription.{name}"
        _reject_unknown(where, entry, _TRANSCRIPTION_KEYS)
        rates = {key: usd_to_micro(entry[key], f"{where}.{key}") for key in _TRANSCRIPTION_KEYS if key in entry}
        try:
            transcription[name] = TranscriptionPrice(**rates)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    if fallback is not None and fallback not in models:
        raise ValueError(f"fallback_model: {fallback!r} is not in models")
    return PriceTable(version=version, models=models, transcription=transcription, fallback_model=fallback)


def dump_price_table(table: PriceTable) -> dict[str, object]:
    """The plain-data form `load_price_table` reads; round-trips exactly."""
    data: dict[str, object] = {
        "version": table.version,
        "models": {
            name: {key: micro_to_usd(getattr(price, key)) for key in _MODEL_KEYS}
            for name, price in table.models.items()
        },
        "transcription": {
            name: {
                key: micro_to_usd(getattr(price, key)) for key in _TRANSCRIPTION_KEYS if getattr(price, key) is not None
            }
            for name, price in table.transcription.items()
        },
    }
    if table.fallback_model is not None:
        data["fallback_model"] = table.fallback_model
    return data


def _div_round_half_up(numerator: int, denominator: int) -> int:
    # Both are non-negative here, so floor division of (n + d/2) rounds halves up.
    return (2 * numerator + denominator) // (2 * denominator)


def _require_rate(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (micro-USD), got {value!r}")


def _resolve(model: str, keys: Mapping[str, object]) -> str | None:
    if model in keys:
        return model
    base = _SNAPSHOT_SUFFIX.sub("", model)
    return base if base != model and base in keys else None


def _model_ceiling(prices: Iterable[ModelPrice]) -> ModelPrice:
    rows = list(prices)
    return ModelPrice(**{key: max(getattr(row, key) for row in rows) for key in _MODEL_KEYS})


def _transcription_ceiling(prices: Iterable[TranscriptionPrice]) -> TranscriptionPrice:
    rows = list(prices)
    rates: dict[str, int | None] = {}
    for key in _TRANSCRIPTION_KEYS:
        present = [value for row in rows if (value := getattr(row, key)) is not None]
        rates[key] = max(present) if present else None
    return TranscriptionPrice(**rates)


def _section(data: Mapping[str, object], key: str) -> Mapping[str, Mapping[str, object]]:
    section = data.get(key)
    if not isinstance(section, Mapping):
        raise ValueError(f"{key}: expected a mapping of model name to rates")
    for name, entry in section.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{key}: model names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{key}.{name}: expected a mapping of rates")
    return section


def _reject_unknown(where: str, entry: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    for key in entry:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: unknown key (expected one of {', '.join(allowed)})")


def _usd(value: str) -> int:
    return usd_to_micro(value, "DEFAULT_PRICE_TABLE")


def _model(text: tuple[str, str, str], audio: tuple[str, str, str], image: tuple[str, str]) -> ModelPrice:
    """Rates in the order of the pricing page: (in, cached in, out) per modality."""
    return ModelPrice(
        text_in=_usd(text[0]),
        cached_text_in=_usd(text[1]),
        text_out=_usd(text[2]),
        audio_in=_usd(audio[0]),
        cached_audio_in=_usd(audio[1]),
        audio_out=_usd(audio[2]),
        image_in=_usd(image[0]),
        cached_image_in=_usd(image[1]),
    )


_GPT_REALTIME_2 = _model(("4.00", "0.40", "24.00"), ("32.00", "0.40", "64.00"), ("5.00", "0.50"))
_GPT_REALTIME_MINI = _model(("0.60", "0.06", "2.40"), ("10.00", "0.30", "20.00"), ("0.80", "0.08"))
_GPT_4O_TRANSCRIBE = TranscriptionPrice(text_in=_usd("2.50"), audio_in=_usd("6.00"), text_out=_usd("10.00"))

# USD per 1M tokens, as (in, cached in, out). Unverified against the live pricing page.
DEFAULT_PRICE_TABLE: Final = PriceTable(
    version="2026-11-24",
    models={
        # GA launch post 2025-08-28 (audio); text/image from third-party tables. Mostly certain.
        "gpt-realtime": _model(("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00"), ("5.00", "0.50")),
        # developers.openai.com model page, crawled 2026. Certain.
        "gpt-realtime-1.5": _model(("4.00", "0.40", "16.00"), ("32.00", "0.40", "64.00"), ("5.00", "0.50")),
        # Model page; audio confirmed by the 2026-05-07 launch post. Certain.
        "gpt-realtime-2": _GPT_REALTIME_2,
        # Model page lists the same prices as gpt-realtime-2. Certain.
        "gpt-realtime-2.1": _GPT_REALTIME_2,
        # Text-in from the 2.1-mini page's comparison; the rest third-party. Uncertain.
        "gpt-realtime-mini": _GPT_REALTIME_MINI,
        # developers.openai.com model page, 2026. Certain.
        "gpt-realtime-2.1-mini": _GPT_REALTIME_MINI,
        # Legacy; from public pricing, uncertain. No image input: image priced at text rates.
        "gpt-4o-realtime-preview": _model(("5.00", "2.50", "20.00"), ("40.00", "2.50", "80.00"), ("5.00", "2.50")),
        # Legacy; from public pricing, uncertain. No image input: image priced at text rates.
        "gpt-4o-mini-realtime-preview": _model(("0.60", "0.30", "2.40"), ("10.00", "0.30", "20.00"), ("0.60", "0.30")),
    },
    transcription={
        # Public pricing page (text in, audio in, text out per 1M). Uncertain.
        "gpt-4o-transcribe": _GPT_4O_TRANSCRIBE,
        # Public pricing page. Uncertain.
        "gpt-4o-mini-transcribe": TranscriptionPrice(
            text_in=_usd("1.25"), audio_in=_usd("3.00"), text_out=_usd("5.00")
        ),
        # Assumed equal to gpt-4o-transcribe. Uncertain.
        "gpt-4o-transcribe-diarize": _GPT_4O_TRANSCRIBE,
        # Public pricing page, $0.006/min. Mostly certain.
        "whisper-1": TranscriptionPrice(per_minute=_usd("0.006")),
        # OpenAI launch post 2026-05-07, $0.017/min. Certain.
        "gpt-realtime-whisper": TranscriptionPrice(per_minute=_usd("0.017")),
    },
)
