"""Register a price table's per-kind rates, so the rollups can split a ledger row into line items.

The ledger stores one rounded cost per row; the rollup triggers (migrations/0008, 0015) split it
across kinds in proportion to quantity x rate, exactly, and need the rates of the row's price
version: a realtime model's eight token kinds, a Responses model's input / cached input / output
(a Live session's delegated tokens), a per-minute model's active and standby time. A version's
rates never change, so registering is idempotent and cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from gateway.finance import sql
from policies.prices.builtin import BUILTIN_TABLES
from policies.prices.rates import DurationPrice, ModelPrice, TokenPrice
from policies.prices.table import CEILING_VERSION_SUFFIX, PriceTable

#: The line-item kinds of a realtime response and the `ModelPrice` rate each is priced at.
LINE_KINDS: Final = (
    ("input text", "text_in"),
    ("cached input text", "cached_text_in"),
    ("input audio", "audio_in"),
    ("cached input audio", "cached_audio_in"),
    ("input image", "image_in"),
    ("cached input image", "cached_image_in"),
    ("output text", "text_out"),
    ("output audio", "audio_out"),
)
#: A Responses model's line-item kinds (micro-USD per 1M tokens) and the `TokenPrice` rate of each.
TOKEN_KINDS: Final = (("input", "text_in"), ("cached input", "cached_text_in"), ("output", "text_out"))
#: A per-minute model's line-item kinds (micro-USD per minute) and the `DurationPrice` rate of each.
DURATION_KINDS: Final = (("session active seconds", "per_minute"), ("session standby seconds", "standby_rate"))
#: The model name the ceiling's rates are registered under.
CEILING_MODEL: Final = "*"
#: A name no table prices: what the `*_price_for` lookups answer with their ceiling for.
_NO_SUCH_MODEL: Final = "\x00ceiling"


def rate_rows(prices: PriceTable) -> list[tuple[str, str, str, int]]:
    """`(price_version, model, kind, rate)` for every realtime, Responses and per-minute model of
    `prices`, and their ceilings (one `*` model of the ceiling version holds all three)."""
    ceiling = prices.version + CEILING_VERSION_SUFFIX
    sections: list[tuple[Mapping[str, Any], tuple[tuple[str, str], ...]]] = [
        (prices.models, LINE_KINDS),
        (prices.responses, TOKEN_KINDS),
        (prices.durations, DURATION_KINDS),
    ]
    rows = [
        row
        for section, kinds in sections
        for model, price in section.items()
        for row in _rows(prices.version_for(model), model, price, kinds)
    ]
    rows += _rows(ceiling, CEILING_MODEL, prices.ceiling, LINE_KINDS)
    rows += _rows(ceiling, CEILING_MODEL, prices.responses_price_for(_NO_SUCH_MODEL)[0], TOKEN_KINDS)
    rows += _rows(ceiling, CEILING_MODEL, prices.duration_price_for(_NO_SUCH_MODEL)[0], DURATION_KINDS)
    return rows


async def register_price_rates(pool: asyncpg.Pool, prices: PriceTable) -> None:
    """Store `prices`' rates and every built-in table's (a no-op for versions already stored)."""
    rows = {row[:3]: row for table in (*BUILTIN_TABLES.values(), prices) for row in rate_rows(table)}
    async with pool.acquire() as conn:
        await conn.executemany(sql.INSERT_RATE, list(rows.values()))


def _rows(
    version: str, model: str, price: ModelPrice | TokenPrice | DurationPrice, kinds: tuple[tuple[str, str], ...]
) -> list[tuple[str, str, str, int]]:
    return [(version, model, kind, getattr(price, attribute)) for kind, attribute in kinds]
