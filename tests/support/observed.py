"""What a burst or a fault test observes from outside the gateway: the emulator's record of the usage
upstream reported, SQL over the ledger, raw Redis keys (layout from docs/live-state.md), and prices
from docs/pricing.md typed in by hand (tests/support/doc_prices.py), never `policies.pricing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from tests.support.doc_prices import TRANSCRIPTION, doc_cost, rate
from tests.support.gateway_process import MODEL

# -- prices --------------------------------------------------------------------------------------

TRANSCRIBER = "gpt-4o-transcribe"


def price_response(usage: dict[str, Any]) -> int:
    """The cost of one gpt-realtime `response.done` usage, micro-USD, by the documented formula."""
    return doc_cost(usage, MODEL)


def worst_case(max_output_tokens: int, input_tokens: int) -> int:
    """docs/budgets.md step 1 with the real input: the output ceiling at the dearest output rate plus the
    input at the dearest input rate, rounded up. A reservation (which over-estimates the input) is never less."""
    out_rate = max(rate(MODEL, "audio_out"), rate(MODEL, "text_out"))
    in_rate = max(rate(MODEL, "text_in"), rate(MODEL, "audio_in"), rate(MODEL, "image_in"))
    return -(-(max_output_tokens * out_rate + input_tokens * in_rate) // 1_000_000)


def price_transcription(usage: dict[str, Any]) -> int:
    """The cost of one token-billed transcription usage, micro-USD (text in, audio in, text out; half up once)."""
    text_in, audio_in, text_out = TRANSCRIPTION[TRANSCRIBER]
    details = usage["input_token_details"]
    total = details["text_tokens"] * text_in + details["audio_tokens"] * audio_in + usage["output_tokens"] * text_out
    return (total + 500_000) // 1_000_000


# -- what upstream reported, what the ledger holds, what Redis counts ----------------------------


@dataclass
class Upstream:
    """The emulator's own record: every response it started and every usage it reported."""

    started: set[str]
    done: dict[str, dict[str, Any]]  # response id -> usage
    transcriptions: dict[str, dict[str, Any]]  # item id -> usage

    @classmethod
    def of(cls, sessions: Iterable[Any]) -> Upstream:
        started: set[str] = set()
        done: dict[str, dict[str, Any]] = {}
        transcriptions: dict[str, dict[str, Any]] = {}
        for session in sessions:
            for event in session.server_events:
                kind = event["type"]
                if kind == "response.created":
                    started.add(event["response"]["id"])
                elif kind == "response.done":
                    done[event["response"]["id"]] = event["response"]["usage"]
                elif kind == "conversation.item.input_audio_transcription.completed":
                    transcriptions[event["item_id"]] = event["usage"]
        return cls(started, done, transcriptions)

    @property
    def cost(self) -> int:
        return sum(map(price_response, self.done.values())) + sum(
            map(price_transcription, self.transcriptions.values())
        )


@dataclass
class Ledger:
    responses: dict[str, tuple[str, int]]  # response id -> (tenant id, cost)
    response_rows: int
    transcriptions: dict[str, tuple[str, int]]  # item id -> (tenant id, cost)
    transcription_rows: int

    @classmethod
    async def read(cls, pool: asyncpg.Pool, tenant_ids: Iterable[str]) -> Ledger:
        tenants = list(tenant_ids)
        rows = await pool.fetch(
            "SELECT response_id, tenant_id, cost_micro_usd FROM usage_ledger WHERE tenant_id = ANY($1::text[])", tenants
        )
        trows = await pool.fetch(
            "SELECT item_id, tenant_id, cost_micro_usd FROM transcription_usage WHERE tenant_id = ANY($1::text[])",
            tenants,
        )
        return cls(
            {r["response_id"]: (r["tenant_id"], r["cost_micro_usd"]) for r in rows},
            len(rows),
            {r["item_id"]: (r["tenant_id"], r["cost_micro_usd"]) for r in trows},
            len(trows),
        )

    def cost(self, tenant_id: str | None = None) -> int:
        return sum(
            cost
            for tenant, cost in (*self.responses.values(), *self.transcriptions.values())
            if tenant_id is None or tenant == tenant_id
        )


@dataclass(frozen=True)
class Counters:
    """A tenant's live-state keys read raw (layout in docs/live-state.md), without reaping anything."""

    leases: int
    reserved: int
    spent_day: int | None

    @classmethod
    async def read(cls, redis: aioredis.Redis, prefix: str, tenant_id: str) -> Counters:
        base = f"{prefix}{{{tenant_id}}}:"
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        leases = await redis.zcard(base + "leases")
        reserved = await redis.get(base + "resv:total")
        spent = await redis.hget(base + f"spend:day:{day}", "spent")
        return cls(int(leases), int(reserved or 0), None if spent is None else int(spent))


async def session_end_reasons(pool: asyncpg.Pool, tenant_ids: Iterable[str]) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT coalesce(end_reason, 'open') AS reason, count(*) AS n FROM realtime_sessions"
        " WHERE tenant_id = ANY($1::text[]) GROUP BY 1",
        list(tenant_ids),
    )
    return {r["reason"]: r["n"] for r in rows}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
