"""Register a price table's per-token-kind rates, so the rollups can split a response into line items.

The ledger stores one rounded cost per response; the rollup trigger (migrations/0008) splits it
across token kinds in proportion to tokens x rate, exactly, and needs the rates of the row's
price version. A version's rates never change, so registering is idempotent and cheap.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from gateway.finance import sql
from policies.prices.builtin import BUILTIN_TABLES
from policies.prices.rates import ModelPrice
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
#: The model name the ceiling's rates are registered under.
CEILING_MODEL: Final = "*"


def rate_rows(prices: PriceTable) -> list[tuple[str, str, str, int]]:
    """`(price_version, model, kind, rate)` for every realtime model of `prices`, and its ceiling."""
    rows = [row for model, price in prices.models.items() for row in _rows(prices.version_for(model), model, price)]
    rows += _rows(prices.version + CEILING_VERSION_SUFFIX, CEILING_MODEL, prices.ceiling)
    return rows


async def register_price_rates(pool: asyncpg.Pool, prices: PriceTable) -> None:
    """Store `prices`' rates and every built-in table's (a no-op for versions already stored)."""
    rows = {row[:3]: row for table in (*BUILTIN_TABLES.values(), prices) for row in rate_rows(table)}
    async with pool.acquire() as conn:
        await conn.executemany(sql.INSERT_RATE, list(rows.values()))


def _rows(version: str, model: str, price: ModelPrice) -> list[tuple[str, str, str, int]]:
    return [(version, model, kind, getattr(price, attribute)) for kind, attribute in LINE_KINDS]
