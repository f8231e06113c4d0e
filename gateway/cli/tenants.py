"""``voxgate tenant``: create and list tenants, set the keys their browser JWTs are verified with, and
route SIP numbers to them (``tenant sip``, `gateway.cli.sip`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.admin import changes
from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthConfigError
from gateway.auth.jwks import parse_allowed_hosts
from gateway.cli import sip
from gateway.cli.command import CLI_ACTOR, CommandError, database_pool, policy_store, require_tenant
from gateway.cli.output import iso, print_json, print_table, tenant_json
from gateway.cli.parsers import Subparsers, add_action, command_actions
from gateway.storage.policy_store import UnknownTier
from gateway.storage.tenants import TenantDirectory


def register(subparsers: Subparsers) -> None:
    actions = command_actions(subparsers, "tenant", help="create and list tenants")
    create = add_action(actions, "create", _tenant_create, help="create a tenant")
    create.add_argument("name", help="unique tenant name")
    create.add_argument("--tier", help="a tier from the tiers file ($VOXGATE_POLICY_FILE)")
    add_action(actions, "list", _tenant_list, help="list tenants")
    tenant_jwt = add_action(
        actions,
        "jwt",
        _tenant_jwt,
        help="set the keys the tenant's browser JWTs are verified with (docs/webrtc.md)",
    )
    tenant_jwt.add_argument("tenant", metavar="TENANT_ID")
    tenant_jwt.add_argument("--hs256-secret-file", metavar="FILE", help="a file holding the HS256 secret (>= 32 bytes)")
    tenant_jwt.add_argument("--jwks-url", metavar="URL", help="https:// JWKS with the RS256/ES256 public keys")
    tenant_jwt.add_argument("--audience", default="voxgate", help="the 'aud' the tokens carry (default: voxgate)")
    tenant_jwt.add_argument(
        "--previous-valid-seconds",
        type=int,
        metavar="SECONDS",
        help="how long a replaced HS256 secret stays valid, 0..3600 (default: 900; 0: a hard cut-over)",
    )
    tenant_jwt.add_argument("--clear", action="store_true", help="remove the tenant's browser-token keys")
    sip.register(actions)


async def _tenant_create(args: argparse.Namespace, dsn: str) -> None:
    """Create a tenant, optionally on a tier (exit 2 for a tier the tiers file lacks).

    JSON: ``{"id", "name", "created_at", "disabled_at"}`` (``disabled_at`` is null), plus
    ``"tier"`` when ``--tier`` was given.
    """
    async with database_pool(dsn) as pool, policy_store(pool) as store:
        try:
            tenant = await changes.create_tenant(pool, store, args.name, args.tier, CLI_ACTOR)
        except UnknownTier as exc:
            raise CommandError(str(exc), exit_code=2) from None
        except ValueError as exc:
            raise CommandError(str(exc), exit_code=2) from None
    if args.json:
        print_json({**tenant_json(tenant), **({"tier": args.tier} if args.tier else {})})
    else:
        print(f"created tenant {tenant.id} ({tenant.name})" + (f" on tier {args.tier}" if args.tier else ""))


async def _tenant_list(args: argparse.Namespace, dsn: str) -> None:
    """List tenants, oldest first.

    JSON: a list of ``{"id", "name", "created_at", "disabled_at"}``.
    """
    async with database_pool(dsn) as pool:
        directory = TenantDirectory(pool)
        tenants = await directory.list_tenants()
    if args.json:
        print_json([tenant_json(t) for t in tenants])
        return
    print_table(
        ("ID", "NAME", "CREATED", "STATUS"),
        [(t.id, t.name, iso(t.created_at), "disabled" if t.disabled else "active") for t in tenants],
    )


def _read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


async def _tenant_jwt(args: argparse.Namespace, dsn: str) -> None:
    """Set (or clear) the keys a tenant's browser JWTs are verified with. No secret is ever printed.

    JSON: ``{"tenant_id", "hs256": bool, "jwks_url", "audience", "previous_hs256_key_id",
    "previous_valid_until"}`` (or ``{"tenant_id", "cleared"}``).
    """
    if args.clear == bool(args.hs256_secret_file or args.jwks_url):
        raise CommandError("give --hs256-secret-file and/or --jwks-url, or --clear", exit_code=2)
    if args.clear and args.previous_valid_seconds is not None:
        raise CommandError("--previous-valid-seconds applies to a change of keys, not to --clear", exit_code=2)
    secret = None
    if args.hs256_secret_file:
        try:
            secret = _read_secret_file(Path(args.hs256_secret_file))
        except OSError as exc:
            raise CommandError(f"cannot read the secret file: {exc.strerror}", exit_code=2) from None
    async with database_pool(dsn) as pool:
        await require_tenant(TenantDirectory(pool), args.tenant)
        if args.clear:
            cleared = await changes.clear_browser_auth(pool, args.tenant, CLI_ACTOR)
            if args.json:
                print_json({"tenant_id": args.tenant, "cleared": cleared})
            else:
                print(f"browser-token keys of {args.tenant} " + ("removed" if cleared else "were not set"))
            return
        try:
            allowed = parse_allowed_hosts(os.environ.get("VOXGATE_JWKS_ALLOWED_HOSTS"))
            info = await changes.set_browser_auth(
                pool,
                BrowserAuthConfig(args.tenant, secret, args.jwks_url, args.audience),
                CLI_ACTOR,
                args.previous_valid_seconds,
                allowed,
            )
        except BrowserAuthConfigError as exc:
            raise CommandError(str(exc), exit_code=2) from None
    until = iso(info.previous_valid_until)
    summary = {
        "tenant_id": args.tenant,
        "hs256": secret is not None,
        "jwks_url": args.jwks_url,
        "audience": args.audience,
        "previous_hs256_key_id": info.previous_hs256_key_id,
        "previous_valid_until": until,
    }
    if args.json:
        print_json(summary)
        return
    kinds = " and ".join(k for k, on in (("HS256 secret", secret is not None), ("JWKS URL", args.jwks_url)) if on)
    print(f"browser tokens of {args.tenant} are verified with its {kinds} (aud {args.audience!r})")
    if until is not None:
        print(f"the previous HS256 secret ({info.previous_hs256_key_id}) stays valid until {until}")
