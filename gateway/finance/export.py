"""The Costs API's three shapes of one page: OpenAI's JSON, CSV, and FOCUS 1.2 rows.

All three are written from the same `CostPage`, so they cannot disagree: the CSV has one row
per bucket and group of the JSON, with the exact decimal USD beside the integer micro-USD.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.finance import buckets, sql
from gateway.finance.costs import CostPage, CostResult
from policies.finance import FOCUS_COLUMNS, FocusCharge, focus_row, usd

#: The FOCUS `BillingAccountId`: one voxgate deployment bills one OpenAI organization.
BILLING_ACCOUNT = "voxgate"


def page_json(page: CostPage) -> dict[str, Any]:
    """OpenAI's page shape; grouped extensions (`model`, `api_key_id`, `end_user`, `tag`) appear when grouped."""
    extensions: list[str] = [key for key in ("model", "api_key_id", "end_user", "tag") if key in page.query.group_by]
    return {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": bucket.start_time,
                "end_time": bucket.end_time,
                "results": [_result_json(result, extensions) for result in bucket.results],
            }
            for bucket in page.buckets
        ],
        "has_more": page.has_more,
        "next_page": page.next_page,
    }


def csv_header(group_by: Iterable[str]) -> list[str]:
    return ["bucket_start", "bucket_end", *group_by, "amount_usd", "amount_micro_usd", "currency"]


def csv_rows(page: CostPage) -> list[list[str]]:
    """One row per bucket and group; bounds are ISO 8601 in the query's zone."""
    zone = buckets.resolve_zone(page.query.tz)
    rows = []
    for bucket in page.buckets:
        start, end = buckets.iso_in_zone(bucket.start_time, zone), buckets.iso_in_zone(bucket.end_time, zone)
        for result in bucket.results:
            dims = [getattr(result, key) or "" for key in page.query.group_by]
            rows.append([start, end, *dims, usd(result.amount_micro_usd), str(result.amount_micro_usd), "usd"])
    return rows


async def focus_rows(pool: asyncpg.Pool, page: CostPage) -> list[dict[str, str]]:
    """FOCUS 1.2 rows of a page grouped by tenant, line item and tag set (`SubAccountName` is the tenant's name)."""
    tenants = sorted({r.project_id for b in page.buckets for r in b.results if r.project_id})
    names = {row["id"]: row["name"] for row in await pool.fetch(sql.TENANT_NAMES, tenants)}
    return [
        focus_row(_charge(bucket.start_time, bucket.end_time, result, names))
        for bucket in page.buckets
        for result in bucket.results
    ]


def render_csv(header: list[str], rows: Iterable[Iterable[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def render_focus(rows: Iterable[Mapping[str, str]]) -> str:
    return render_csv(list(FOCUS_COLUMNS), ([row[c] for c in FOCUS_COLUMNS] for row in rows))


def _result_json(result: CostResult, extensions: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "organization.costs.result",
        "amount": {"value": result.amount_micro_usd / 1_000_000, "currency": "usd"},
        "amount_micro_usd": result.amount_micro_usd,
        "line_item": result.line_item,
        "project_id": result.project_id,
    }
    for key in extensions:
        body[key] = getattr(result, key)
    return body


def _charge(start: int, end: int, result: CostResult, names: Mapping[str, str]) -> FocusCharge:
    month = datetime.fromtimestamp(start, UTC).replace(day=1, hour=0, minute=0, second=0)
    following = (
        month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
    )
    tenant = result.project_id or ""
    return FocusCharge(
        period_start=start,
        period_end=end,
        billing_period_start=int(month.timestamp()),
        billing_period_end=int(following.timestamp()),
        tenant_id=tenant,
        tenant_name=names.get(tenant, tenant),
        line_item=result.line_item or "",
        quantity=result.quantity,
        unit=result.unit or "",
        amount_micro_usd=result.amount_micro_usd,
        tags=result.tags or {},
        billing_account=BILLING_ACCOUNT,
    )
