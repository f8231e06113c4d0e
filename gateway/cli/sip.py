"""``voxgate tenant sip``: route called SIP numbers to a tenant and set where its inbound calls are announced.

The same change as ``PUT/GET/DELETE /admin/v1/tenants/{id}/sip`` (`gateway.sip.config`, docs/live.md#sip):
validated alike, stored alike, audited alike (actor ``"cli"``). The webhook secret is read from a file and
never printed back: output says only whether one is set.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.command import CLI_ACTOR, CommandError, database_pool, require_tenant
from gateway.cli.output import print_json
from gateway.cli.parsers import Subparsers, add_action
from gateway.errors import GatewayError
from gateway.sip.config import SipConfig, SipRoutingSet, validate_routing
from gateway.storage.policy_store import audit
from gateway.storage.tenants import TenantDirectory


def register(tenant_actions: Subparsers) -> None:
    """Add ``sip set | show | clear`` under ``voxgate tenant``."""
    sip = tenant_actions.add_parser("sip", help="route SIP numbers to the tenant (docs/live.md#sip)")
    actions = sip.add_subparsers(dest="sip_action", required=True, metavar="ACTION")
    routing_set = add_action(
        actions,
        "set",
        _sip_set,
        help="replace the tenant's called numbers and webhook",
        description="Route each --number (the user part of the SIP To URI) to the tenant, replacing the numbers "
        "it had, and announce its inbound calls to --webhook-url signed with the whsec_ secret in the file.",
    )
    routing_set.add_argument("tenant", metavar="TENANT_ID")
    routing_set.add_argument(
        "--number", dest="numbers", action="append", required=True, metavar="NUMBER", help="e.g. +18005550100; repeat"
    )
    routing_set.add_argument("--webhook-url", required=True, metavar="URL", help="http(s) URL the events go to")
    routing_set.add_argument(
        "--webhook-secret-file", required=True, metavar="FILE", help="a file holding the whsec_ signing secret"
    )
    show = add_action(actions, "show", _sip_show, help="show the tenant's numbers and webhook URL (never the secret)")
    show.add_argument("tenant", metavar="TENANT_ID")
    clear = add_action(actions, "clear", _sip_clear, help="route no number to the tenant any more")
    clear.add_argument("tenant", metavar="TENANT_ID")


def _routing_json(tenant_id: str, numbers: list[str], webhook_url: str | None) -> dict[str, Any]:
    # The admin API's SipRoutingOut, field for field.
    return {
        "tenant_id": tenant_id,
        "numbers": numbers,
        "webhook_url": webhook_url,
        "webhook_secret_set": webhook_url is not None,
    }


def _print_routing(routing: dict[str, Any]) -> None:
    if not routing["numbers"] and routing["webhook_url"] is None:
        print(f"tenant {routing['tenant_id']} has no SIP routing")
        return
    print(f"tenant {routing['tenant_id']} answers: {', '.join(routing['numbers']) or '(no number)'}")
    print(f"inbound calls are announced to {routing['webhook_url']} (signed; the secret is not shown)")


def _read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


async def _sip_set(args: argparse.Namespace, dsn: str) -> None:
    """Replace the tenant's numbers and webhook. Exit 2 for an invalid number, URL or secret;
    exit 1 when another tenant holds one of the numbers (nothing changes).

    JSON: ``{"tenant_id", "numbers", "webhook_url", "webhook_secret_set"}``.
    """
    try:
        secret = _read_secret_file(Path(args.webhook_secret_file))
    except OSError as exc:
        raise CommandError(f"cannot read the secret file: {exc.strerror}", exit_code=2) from None
    try:
        numbers, webhook = validate_routing(SipRoutingSet(args.numbers, args.webhook_url, secret))
    except GatewayError as exc:  # its message never holds the secret
        raise CommandError(exc.message.replace("'webhook_secret'", "the secret file's secret"), exit_code=2) from None
    async with database_pool(dsn) as pool:
        await require_tenant(TenantDirectory(pool), args.tenant)
        taken = await SipConfig(pool).replace(args.tenant, numbers, webhook)
        if taken:
            raise CommandError(f"number(s) {', '.join(taken)} are routed to another tenant; remove them there first")
        await audit(pool, CLI_ACTOR, args.tenant, "sip_routing.set", {"numbers": numbers, "url": webhook.url})
    routing = _routing_json(args.tenant, numbers, webhook.url)
    if args.json:
        print_json(routing)
    else:
        _print_routing(routing)


async def _sip_show(args: argparse.Namespace, dsn: str) -> None:
    """The tenant's numbers and webhook URL; never the secret.

    JSON: ``{"tenant_id", "numbers", "webhook_url", "webhook_secret_set"}`` (``webhook_url`` null when unset).
    """
    async with database_pool(dsn) as pool:
        await require_tenant(TenantDirectory(pool), args.tenant)
        config = SipConfig(pool)
        numbers = await config.numbers(args.tenant)
        webhook = await config.webhook(args.tenant)
    routing = _routing_json(args.tenant, numbers, webhook.url if webhook else None)
    if args.json:
        print_json(routing)
    else:
        _print_routing(routing)


async def _sip_clear(args: argparse.Namespace, dsn: str) -> None:
    """Remove the tenant's numbers and webhook (audited only when there was something to remove).

    JSON: ``{"tenant_id", "cleared"}``.
    """
    async with database_pool(dsn) as pool:
        await require_tenant(TenantDirectory(pool), args.tenant)
        cleared = await SipConfig(pool).clear(args.tenant)
        if cleared:
            await audit(pool, CLI_ACTOR, args.tenant, "sip_routing.clear", {})
    if args.json:
        print_json({"tenant_id": args.tenant, "cleared": cleared})
    else:
        print(f"SIP routing of {args.tenant} " + ("removed" if cleared else "was not set"))
