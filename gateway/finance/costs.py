"""The Costs API's one query: buckets of a zone, grouped sums of the rollups, one page at a time.

Reuse from anywhere in the shell (the dashboard, reconciliation, the CLI)::

    from gateway.finance.costs import query_costs
    from policies.finance import CostQuery

    page = await query_costs(pool, CostQuery(start_time=..., bucket_width="1d", tz="Europe/Paris",
                                             group_by=("project_id", "line_item")))
    for bucket in page.buckets:          # CostBucket: start_time, end_time (Unix seconds), results
        for result in bucket.results:    # CostResult: amount_micro_usd, project_id, line_item, ...
            ...
    page.has_more, page.next_page        # pass next_page back as CostQuery(page=decode_cursor(...))

`query_costs` raises `CostQueryError` (a bad zone or cursor) and applies no tenant scope of its
own: a caller that serves one tenant sets `project_ids` to that tenant. Every amount is exact
integer micro-USD and every bucket a sum of UTC quarter hours (docs/finance.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.finance import buckets, sql
from policies.finance import CostQuery, CostQueryError, encode_cursor

#: Groupings the hourly and daily rollups can answer (with filters on tenant and model only).
_COARSE_GROUPS = frozenset({"project_id", "line_item", "model"})


@dataclass(frozen=True, slots=True)
class CostResult:
    """One group's sum in one bucket; a dimension not grouped by is None."""

    amount_micro_usd: int
    quantity: int
    unit: str | None = None
    project_id: str | None = None
    line_item: str | None = None
    model: str | None = None
    api_key_id: str | None = None
    end_user: str | None = None
    tag: str | None = None
    tags: dict[str, str] | None = None  # the whole tag set (FOCUS exports only)


@dataclass(frozen=True, slots=True)
class CostBucket:
    start_time: int
    end_time: int
    results: list[CostResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CostPage:
    query: CostQuery
    buckets: list[CostBucket]
    has_more: bool
    next_page: str | None


async def query_costs(pool: asyncpg.Pool, query: CostQuery, clock: Clock = SYSTEM_CLOCK) -> CostPage:
    """One page of `query`'s buckets (every bucket, empty ones too) with their grouped sums."""
    zone = buckets.resolve_zone(query.tz)
    end = query.end_time if query.end_time is not None else int(clock.time())
    first = buckets.bucket_floor(zone, query.bucket_width, query.start_time)
    start = first
    if query.page is not None:
        if (
            query.page < first
            or query.page >= end
            or buckets.bucket_floor(zone, query.bucket_width, query.page) != query.page
        ):
            raise CostQueryError("'page' is not a cursor of this query.", "page")
        start = query.page
    if start >= end:
        return CostPage(query, [], False, None)
    bounds, has_more = buckets.page_bounds(zone, query.bucket_width, start, end, query.limit)
    rows = await _fetch(pool, query, bounds)
    grouped: dict[int, list[CostResult]] = {}
    for row in rows:
        grouped.setdefault(row["bucket"], []).append(_result(row))
    page = [CostBucket(bounds[i], bounds[i + 1], grouped.get(i + 1, [])) for i in range(len(bounds) - 1)]
    return CostPage(query, page, has_more, encode_cursor(bounds[-1]) if has_more else None)


def coarse_rollup(query: CostQuery, bounds: list[int]) -> tuple[str, list[int]] | None:
    """The coarse statement that answers `query` exactly, and the UTC hours its bounds cut; None when
    `query` needs a dimension only the 15-minute rollup has (key, end user, tags).

    Whole UTC days read the daily rollup. Otherwise whole hours read the hourly one, and an hour
    a bound cuts (a zone at :30 or :45 past the hour) is read from the slim 15-minute rollup.
    """
    if not set(query.group_by) <= _COARSE_GROUPS or query.api_key_ids is not None or query.group_tag_sets:
        return None
    if all(b % 86400 == 0 for b in bounds):
        return sql.COSTS_1D, []
    return sql.COSTS_1H, sorted({b - b % 3600 for b in bounds if b % 3600})


async def _fetch(pool: asyncpg.Pool, query: CostQuery, bounds: list[int]) -> list[asyncpg.Record]:
    times = [buckets.utc_datetime(b) for b in bounds]
    groups = set(query.group_by)
    tenants = list(query.project_ids) if query.project_ids is not None else None
    models = list(query.models) if query.models is not None else None
    coarse = coarse_rollup(query, bounds)
    if coarse is not None:
        statement, cut = coarse
        cut_hours = [buckets.utc_datetime(h) for h in cut]
        flags = ["project_id" in groups, "line_item" in groups, "model" in groups]
        return await _run(pool, statement, [times, tenants, models, cut_hours, *flags])
    keys = list(query.api_key_ids) if query.api_key_ids is not None else None
    args: list[Any] = [
        times,
        tenants,
        keys,
        models,
        "project_id" in groups,
        "line_item" in groups,
        "model" in groups,
        "api_key_id" in groups,
        "end_user" in groups,
        query.tag_key if "tag" in groups else None,
        query.group_tag_sets,
    ]
    return await _run(pool, sql.COSTS_15M, args)


async def _run(pool: asyncpg.Pool, statement: str, args: list[Any]) -> list[asyncpg.Record]:
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(sql.QUERY_SETTINGS)
        rows: list[asyncpg.Record] = await conn.fetch(statement, *args)
    return rows


def _result(row: asyncpg.Record) -> CostResult:
    return CostResult(
        amount_micro_usd=row["amount_micro_usd"],
        quantity=row["quantity"],
        unit=row["unit"],
        project_id=row["project_id"],
        line_item=row["line_item"],
        model=row["model"],
        api_key_id=row["api_key_id"] or None,  # '' in the rollup: a browser token, no key
        end_user=row["end_user"] or None,
        tag=row["tag"],
        tags=orjson.loads(row["tags"]) if row["tags"] is not None else None,
    )
