"""``voxgate usage``: a tenant's responses with their tokens and cost, then totals."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime
from typing import Any

from gateway.cli.command import common_options, database_pool, handler, require_tenant
from gateway.cli.output import format_usd, iso, json_value, print_json, print_table
from gateway.ledger.reports import UsageReport, ledger_for_tenant
from gateway.storage.tenants import TenantDirectory


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = subparsers.add_parser("usage", parents=common_options(), help="show a tenant's usage and cost")
    usage.add_argument("--tenant", required=True, metavar="TENANT_ID")
    usage.add_argument(
        "--since",
        type=parse_timestamp,
        metavar="ISO8601",
        help="only responses at or after this time (UTC if no offset is given)",
    )
    usage.set_defaults(handler=handler(_usage))


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date or timestamp; one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid ISO 8601 timestamp {text!r} (example: 2025-01-31T00:00:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment


async def _usage(args: argparse.Namespace, dsn: str) -> None:
    """A tenant's responses with their tokens and cost, then totals.

    JSON::

        {"tenant_id", "since",
         "responses": [{"response_id", "session_id", "occurred_at", "model", "status",
                        "input_tokens", "output_tokens", "total_tokens",
                        "input_text_tokens", "input_audio_tokens", "input_image_tokens",
                        "cached_text_tokens", "cached_audio_tokens", "cached_image_tokens",
                        "output_text_tokens", "output_audio_tokens",
                        "cost_micro_usd", "price_version"}, ...],
         "totals": {"responses", "input_tokens", "output_tokens", "cost_micro_usd"},
         "transcription": {"items", "input_audio_tokens", "input_text_tokens",
                           "output_tokens", "duration_ms", "cost_micro_usd"},
         "total_cost_micro_usd"}

    ``responses`` is oldest first; ``total_cost_micro_usd`` is responses plus transcription.
    """
    async with database_pool(dsn) as pool:
        await require_tenant(TenantDirectory(pool), args.tenant)
        report = await ledger_for_tenant(pool, args.tenant, args.since)
    if args.json:
        print_json(_usage_json(report))
    else:
        _print_usage(report)


def _usage_json(report: UsageReport) -> dict[str, Any]:
    return {
        "tenant_id": report.tenant_id,
        "since": iso(report.since),
        "responses": [
            {name: json_value(value) for name, value in dataclasses.asdict(row).items()} for row in report.rows
        ],
        "totals": dataclasses.asdict(report.totals),
        "transcription": dataclasses.asdict(report.transcription),
        "total_cost_micro_usd": report.total_cost_micro_usd,
    }


def _print_usage(report: UsageReport) -> None:
    print_table(
        ("TIME", "MODEL", "STATUS", "INPUT", "OUTPUT", "COST micro-USD", "COST USD"),
        [
            (
                iso(row.occurred_at),
                row.model,
                row.status,
                str(row.input_tokens),
                str(row.output_tokens),
                str(row.cost_micro_usd),
                format_usd(row.cost_micro_usd),
            )
            for row in report.rows
        ],
    )
    totals, asr = report.totals, report.transcription
    print()
    print(
        f"responses: {totals.responses}  input tokens: {totals.input_tokens}  "
        f"output tokens: {totals.output_tokens}  "
        f"cost: {totals.cost_micro_usd} micro-USD ({format_usd(totals.cost_micro_usd)})"
    )
    print(
        f"transcription: {asr.items} items  audio tokens: {asr.input_audio_tokens}  "
        f"duration: {asr.duration_ms} ms  "
        f"cost: {asr.cost_micro_usd} micro-USD ({format_usd(asr.cost_micro_usd)})"
    )
    total = report.total_cost_micro_usd
    print(f"total cost: {total} micro-USD ({format_usd(total)})")
