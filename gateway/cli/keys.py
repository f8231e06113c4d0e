"""``voxgate key``: issue, list and revoke a tenant's API keys."""

from __future__ import annotations

import argparse

from gateway.admin import changes
from gateway.cli.command import CLI_ACTOR, CommandError, database_pool, require_tenant
from gateway.cli.output import iso, key_json, key_status, print_json, print_table
from gateway.cli.parsers import Subparsers, add_action, command_actions
from gateway.storage.tenants import TenantDirectory


def register(subparsers: Subparsers) -> None:
    actions = command_actions(subparsers, "key", help="issue, list and revoke API keys")
    create = add_action(actions, "create", _key_create, help="issue a key (secret shown once)")
    create.add_argument("--tenant", required=True, metavar="TENANT_ID")
    create.add_argument("--name", help="a label for humans, e.g. 'staging'")
    listing = add_action(actions, "list", _key_list, help="list a tenant's keys")
    listing.add_argument("--tenant", required=True, metavar="TENANT_ID")
    revoke = add_action(actions, "revoke", _key_revoke, json=False, help="revoke a key for good")
    revoke.add_argument("key_id", metavar="KEY_ID")


async def _key_create(args: argparse.Namespace, dsn: str) -> None:
    """Issue a key; the secret is printed this once and cannot be recovered later.

    JSON: ``{"id", "tenant_id", "name", "prefix", "secret", "created_at"}``.
    """
    async with database_pool(dsn) as pool:
        issued = await changes.create_key(pool, args.tenant, args.name, CLI_ACTOR)
    if args.json:
        print_json(
            {
                "id": issued.id,
                "tenant_id": issued.tenant_id,
                "name": issued.name,
                "prefix": issued.prefix,
                "secret": issued.secret,
                "created_at": iso(issued.created_at),
            }
        )
        return
    print(f"created key {issued.id} for tenant {issued.tenant_id}")
    print(f"secret: {issued.secret}")
    print("Store this secret now: it will not be shown again.")


async def _key_list(args: argparse.Namespace, dsn: str) -> None:
    """List a tenant's keys, revoked ones included; never secrets or hashes.

    JSON: a list of ``{"id", "tenant_id", "name", "prefix", "status", "created_at",
    "revoked_at", "last_used_at"}`` with ``status`` one of ``"active"``, ``"revoked"``.
    """
    async with database_pool(dsn) as pool:
        directory = TenantDirectory(pool)
        await require_tenant(directory, args.tenant)
        keys = await directory.list_keys(args.tenant)
    if args.json:
        print_json([key_json(k) for k in keys])
        return
    print_table(
        ("ID", "PREFIX", "NAME", "STATUS", "CREATED", "LAST USED"),
        [
            (
                k.id,
                k.prefix + "...",
                k.name or "",
                key_status(k),
                iso(k.created_at),
                iso(k.last_used_at) or "never",
            )
            for k in keys
        ],
    )


async def _key_revoke(args: argparse.Namespace, dsn: str) -> None:
    """Revoke a key. Exit 1 if there is no such key or it is already revoked."""
    async with database_pool(dsn) as pool:
        revoked = await changes.revoke_key(pool, args.key_id, CLI_ACTOR)
    if not revoked:
        raise CommandError(f"no active key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")
