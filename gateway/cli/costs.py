"""``voxgate costs export``: the Costs API's CSV or FOCUS rows for a time range, every page, to a file.

The rows are the API's own (`gateway.finance.export` over `query_costs`), so an export and a
`GET /v1/organization/costs?format=csv|focus` of the same range agree line for line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from gateway.cli.command import CommandError, database_option, database_pool, handler
from gateway.cli.usage import parse_timestamp
from gateway.finance.costs import query_costs
from gateway.finance.export import csv_header, csv_rows, focus_rows, render_csv, render_focus
from policies.finance import GROUP_KEYS, MAX_LIMIT, CostQuery, CostQueryError, decode_cursor


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    costs = subparsers.add_parser("costs", help="cost exports (the Costs API's rows)")
    commands = costs.add_subparsers(dest="costs_command", required=True, metavar="COMMAND")
    export = commands.add_parser("export", parents=[database_option()], help="write CSV or FOCUS 1.2 rows")
    export.add_argument("--format", choices=("csv", "focus"), default="csv")
    export.add_argument("--start", type=parse_timestamp, required=True, metavar="ISO8601", help="inclusive")
    export.add_argument("--end", type=parse_timestamp, required=True, metavar="ISO8601", help="exclusive")
    export.add_argument("--bucket-width", choices=("1d", "1h", "1mo"), default="1d")
    export.add_argument("--tz", default="UTC", help="IANA zone the buckets start in (default UTC)")
    export.add_argument(
        "--group-by", default="project_id,line_item", help=f"comma list of {', '.join(GROUP_KEYS)} (csv only)"
    )
    export.add_argument("--tag-key", help="the tag key for --group-by tag")
    export.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT_ID", help="repeatable")
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=handler(_export))


async def _export(args: argparse.Namespace, dsn: str) -> None:
    """Every page of the range, one header, rows in bucket order."""
    query = _query(args)
    header: list[str] = []
    lines: list[str] = []
    async with database_pool(dsn) as pool:
        while True:
            try:
                page = await query_costs(pool, query)
            except CostQueryError as exc:
                raise CommandError(f"--{exc.param.replace('_', '-')}: {exc.message}", 2) from None
            if args.format == "csv":
                header = csv_header(query.group_by)
                body = render_csv(header, csv_rows(page))
            else:
                body = render_focus(await focus_rows(pool, page))
            lines.extend(body.splitlines()[0 if not lines else 1 :])
            if page.next_page is None:
                break
            query = dataclasses.replace(query, page=decode_cursor(page.next_page))
    text = "\n".join(lines) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)


def _query(args: argparse.Namespace) -> CostQuery:
    groups = tuple(g.strip() for g in args.group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUP_KEYS]
    if unknown:
        raise CommandError(f"--group-by: unknown {', '.join(unknown)} (choose from {', '.join(GROUP_KEYS)})", 2)
    if ("tag" in groups) != (args.tag_key is not None):
        raise CommandError("--group-by tag needs --tag-key (and --tag-key needs --group-by tag)", 2)
    start, end = _seconds(args.start), _seconds(args.end)
    if end <= start:
        raise CommandError("--end must be after --start", 2)
    query = CostQuery(
        start_time=start,
        end_time=end,
        bucket_width=args.bucket_width,
        limit=MAX_LIMIT,
        group_by=tuple(g for g in GROUP_KEYS if g in groups),
        tz=args.tz,
        tag_key=args.tag_key,
        project_ids=tuple(args.tenants) if args.tenants else None,
        format=args.format,
    )
    if args.format == "focus":
        query = dataclasses.replace(query, group_by=("project_id", "line_item"), tag_key=None, group_tag_sets=True)
    return query


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())
