"""``voxgate alerts list``: the budget alert delivery log (docs/finance.md, "Budget alerts")."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.alerts.outbox import AlertOutbox
from gateway.cli.command import common_options, database_pool, handler
from gateway.cli.output import print_json, print_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = subparsers.add_parser("alerts", help="budget alerts and their webhook deliveries")
    commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=common_options(), help="the delivery log, newest first")
    listing.add_argument("--tenant", metavar="TENANT_ID", help="only this tenant's alerts")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N rows (default 100)")
    listing.set_defaults(handler=handler(_list))


async def _list(args: argparse.Namespace, dsn: str) -> None:
    """JSON: ``{"data": [the rows of GET /v1/organization/alerts]}``."""
    async with database_pool(dsn) as pool:
        rows = await AlertOutbox(pool).deliveries(args.tenant, max(1, min(args.limit, 1000)))
    if args.json:
        print_json({"data": rows})
        return
    print_table(
        (
            "TENANT",
            "PERIOD",
            "PERIOD START",
            "THRESHOLD",
            "SPENT / BUDGET micro-USD",
            "SENT AT",
            "ATTEMPTS",
            "LAST STATUS",
        ),
        [_row(row) for row in rows],
    )


def _row(row: dict[str, Any]) -> tuple[str, ...]:
    return (
        row["tenant_id"],
        row["period"],
        row["period_start"],
        f"{row['threshold']:g}",
        f"{row['spent_micro_usd']} / {row['budget_micro_usd']}",
        row["delivered_at"] or ("given up" if row["given_up_at"] else "pending"),
        str(row["attempts"]),
        row["last_status"] or "-",
    )
