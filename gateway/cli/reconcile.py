"""``voxgate costs reconcile``: voxgate's ledger against OpenAI's own Costs API, per UTC day and line item.

OpenAI's side is an export of `GET /v1/organization/costs` grouped by `project_id` and
`line_item` with `bucket_width=1d` (a page, a list of pages, or one page per line), or a live
fetch with ``$VOXGATE_OPENAI_ADMIN_KEY`` from ``$VOXGATE_UPSTREAM_URL``/organization/costs
(``--openai-url`` overrides the base), trusting the system store plus
``$VOXGATE_UPSTREAM_CA_FILE`` as every upstream connection does (`gateway.upstream_tls`).
voxgate's side is the same query on its own Costs API (`gateway.finance.costs.query_costs`,
UTC days). Without ``--project-map`` the two are compared
across every project and every tenant; with one (JSON ``{"proj_…": "tenant id"}``) only the
mapped projects and tenants, each tenant on its own rows.

Exit status: 0 when every row is within tolerance, 3 when one is not (1 and 2 as every command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx

from gateway.cli.command import CommandError, common_options, database_pool, handler
from gateway.cli.output import format_usd, print_json, print_table
from gateway.finance.costs import query_costs
from gateway.settings import Settings, SettingsError
from gateway.upstream_tls import describe_failure, http_client
from policies.finance import CostQuery, decode_cursor

ADMIN_KEY_ENV: Final = "VOXGATE_OPENAI_ADMIN_KEY"
COSTS_PATH: Final = "/organization/costs"  # under OpenAI's API base (VOXGATE_UPSTREAM_URL's default)
MISMATCH_EXIT: Final = 3
ALL_TENANTS: Final = "*"
DAY: Final = 86_400

Key = tuple[int, str, str]  # (UTC day start, tenant or ALL_TENANTS, line item)


@dataclass(frozen=True, slots=True)
class Row:
    day: int
    tenant: str
    line_item: str
    openai: int  # micro-USD
    voxgate: int

    @property
    def difference(self) -> int:
        return self.voxgate - self.openai

    @property
    def ratio(self) -> float | None:
        return None if self.openai == 0 else self.voxgate / self.openai

    def within(self, relative: Decimal, absolute_micro: int) -> bool:
        """Within tolerance: off by at most `absolute_micro`, or by at most `relative` of the larger side."""
        gap = abs(self.difference)
        return gap <= absolute_micro or gap <= relative * max(abs(self.openai), abs(self.voxgate))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reconcile`` under ``voxgate costs`` (creating the group if no command made it yet)."""
    costs = subparsers.choices.get("costs") or subparsers.add_parser("costs", help="costs from the ledger")
    groups = [a for a in costs._actions if isinstance(a, argparse._SubParsersAction)]
    commands = groups[0] if groups else costs.add_subparsers(dest="costs_command", required=True, metavar="COMMAND")
    cmd = commands.add_parser(
        "reconcile", parents=common_options(), help="compare the ledger with OpenAI's Costs API, per UTC day"
    )
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--openai-costs", type=Path, metavar="FILE", help="an export of OpenAI's Costs API (JSON)")
    source.add_argument(
        "--fetch-days", type=int, metavar="N", help=f"fetch the last N UTC days live (${ADMIN_KEY_ENV})"
    )
    cmd.add_argument(
        "--openai-url",
        metavar="URL",
        help="OpenAI's API base for --fetch-days (default $VOXGATE_UPSTREAM_URL, else https://api.openai.com/v1)",
    )
    cmd.add_argument("--project-map", type=Path, metavar="FILE", help='JSON {"proj_…": "<tenant id>", …}')
    cmd.add_argument(
        "--tolerance", type=Decimal, default=Decimal("0.01"), help="relative difference allowed (default 0.01 = 1%%)"
    )
    cmd.add_argument(
        "--tolerance-usd", type=Decimal, default=Decimal("0.01"), help="absolute difference allowed (default 0.01)"
    )
    cmd.set_defaults(handler=handler(_reconcile))


async def _reconcile(args: argparse.Namespace, dsn: str) -> None:
    """JSON: ``{"rows": [{"date", "tenant_id", "line_item", "openai_micro_usd", "voxgate_micro_usd",
    "difference_micro_usd", "ratio", "within_tolerance"}], "within_tolerance"}``."""
    pages = (
        _read_pages(args.openai_costs) if args.openai_costs else await _fetch_pages(args.fetch_days, args.openai_url)
    )
    projects = _project_map(args.project_map) if args.project_map else None
    openai = openai_amounts(pages, projects)
    if not openai:
        raise CommandError("the OpenAI export has no cost results")
    days = sorted({day for day, _, _ in openai})
    async with database_pool(dsn) as pool:
        ours = await voxgate_amounts(
            pool, days[0], days[-1] + DAY, None if projects is None else set(projects.values())
        )
    rows = compare(openai, ours)
    absolute = int(args.tolerance_usd * 1_000_000)
    verdicts = [row.within(args.tolerance, absolute) for row in rows]
    if args.json:
        print_json(
            {
                "rows": [_row_json(r, ok) for r, ok in zip(rows, verdicts, strict=True)],
                "within_tolerance": all(verdicts),
            }
        )
    else:
        _print(rows, verdicts)
    if not all(verdicts):
        raise CommandError(f"{verdicts.count(False)} of {len(rows)} rows differ beyond the tolerance", MISMATCH_EXIT)


def _read_pages(path: Path) -> list[Mapping[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:  # one page per line (what a paging script appends)
            document = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not JSON: {exc}", exit_code=2) from None
    pages = document if isinstance(document, list) else [document]
    if not all(isinstance(p, dict) and p.get("object") == "page" for p in pages):
        raise CommandError(f'{path}: expected Costs API pages (objects with "object": "page")', exit_code=2)
    return pages


def _project_map(path: Path) -> dict[str, str]:
    try:
        mapping = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read the project map {path}: {exc}", exit_code=2) from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise CommandError(f"{path}: expected a JSON object of project id -> tenant id", exit_code=2)
    return mapping


def micro_usd(value: Any) -> int:
    """OpenAI's USD amount (a JSON number or string) as integer micro-USD, half to even."""
    try:
        return int((Decimal(str(value)) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ValueError):
        raise CommandError(f"not an amount: {value!r}", exit_code=2) from None


def openai_amounts(pages: Iterable[Mapping[str, Any]], projects: Mapping[str, str] | None) -> dict[Key, int]:
    """OpenAI's micro-USD per (UTC day, tenant, line item); unmapped projects are left out when mapping."""
    sums: dict[Key, int] = defaultdict(int)
    for bucket in (b for page in pages for b in page.get("data") or ()):
        day = int(bucket["start_time"]) // DAY * DAY
        for result in bucket.get("results") or ():
            project = result.get("project_id") or ""
            if projects is not None and project not in projects:
                continue
            tenant = ALL_TENANTS if projects is None else projects[project]
            sums[(day, tenant, result.get("line_item") or "(none)")] += micro_usd(result["amount"]["value"])
    return dict(sums)


async def voxgate_amounts(pool: asyncpg.Pool, start: int, end: int, tenants: set[str] | None) -> dict[Key, int]:
    """The ledger's micro-USD per (UTC day, tenant, line item), read through the Costs API's query."""
    group_by = ("line_item",) if tenants is None else ("project_id", "line_item")
    project_ids = None if tenants is None else tuple(sorted(tenants))
    query = CostQuery(
        start_time=start, end_time=end, bucket_width="1d", limit=31, group_by=group_by, project_ids=project_ids
    )
    sums: dict[Key, int] = defaultdict(int)
    while True:
        page = await query_costs(pool, query)
        for bucket in page.buckets:
            for result in bucket.results:
                tenant = ALL_TENANTS if tenants is None else result.project_id or ""
                sums[(bucket.start_time, tenant, result.line_item or "(none)")] += result.amount_micro_usd
        if not page.has_more or page.next_page is None:
            return dict(sums)
        query = dataclasses.replace(query, page=decode_cursor(page.next_page))


def compare(openai: Mapping[Key, int], ours: Mapping[Key, int]) -> list[Row]:
    """One row per key on either side, by day, tenant and line item."""
    return [Row(*key, openai.get(key, 0), ours.get(key, 0)) for key in sorted(set(openai) | set(ours))]


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def _ratio(row: Row) -> str:
    return "-" if row.ratio is None else f"{row.ratio:.6f}"


def _row_json(row: Row, ok: bool) -> dict[str, Any]:
    return {
        "date": _day(row.day),
        "tenant_id": None if row.tenant == ALL_TENANTS else row.tenant,
        "line_item": row.line_item,
        "openai_micro_usd": row.openai,
        "voxgate_micro_usd": row.voxgate,
        "difference_micro_usd": row.difference,
        "ratio": row.ratio,
        "within_tolerance": ok,
    }


def _print(rows: list[Row], verdicts: list[bool]) -> None:
    print_table(
        ("DATE (UTC)", "TENANT", "LINE ITEM", "OPENAI USD", "VOXGATE USD", "DIFFERENCE USD", "RATIO", ""),
        [
            (
                _day(r.day),
                "all" if r.tenant == ALL_TENANTS else r.tenant,
                r.line_item,
                format_usd(r.openai),
                format_usd(r.voxgate),
                format_usd(r.difference),
                _ratio(r),
                "ok" if ok else "MISMATCH",
            )
            for r, ok in zip(rows, verdicts, strict=True)
        ],
    )


async def _fetch_pages(days: int, base_url: str | None = None) -> list[Mapping[str, Any]]:
    """The last `days` UTC days from OpenAI's Costs API, every page (an admin key is required)."""
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        raise CommandError(f"--fetch-days needs ${ADMIN_KEY_ENV} (an OpenAI admin key)", exit_code=2)
    try:
        upstream = Settings.from_env().upstream  # its URL and VOXGATE_UPSTREAM_CA_FILE
    except SettingsError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    url = (base_url or upstream.url).rstrip("/") + COSTS_PATH
    now = int(datetime.now(UTC).timestamp())
    params: dict[str, Any] = {
        "start_time": (now // DAY - max(1, days) + 1) * DAY,
        "bucket_width": "1d",
        "group_by": ["project_id", "line_item"],
        "limit": 31,
    }
    pages: list[Mapping[str, Any]] = []
    async with http_client(upstream, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        for page in _paged(pages):
            try:
                response = await http.get(url, params={**params, **page})
            except httpx.HTTPError as exc:  # DNS, TCP or TLS (before any header is sent), or a timeout
                raise CommandError(f"cannot reach OpenAI's Costs API: {describe_failure(exc).sentence()}") from None
            if response.status_code != 200:  # the body may echo request details, never the key
                raise CommandError(f"OpenAI's Costs API answered {response.status_code}")
            pages.append(response.json())
    return pages


def _paged(pages: list[Mapping[str, Any]]) -> Iterator[dict[str, str]]:
    """Page parameters until the last page fetched says there is no more."""
    yield {}
    while pages and pages[-1].get("has_more") and pages[-1].get("next_page"):
        yield {"page": str(pages[-1]["next_page"])}
