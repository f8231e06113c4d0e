"""``voxgate policy``: show a tenant's policy in force, and change it (a new version)."""

from __future__ import annotations

import argparse

import yaml

from gateway.admin import changes
from gateway.cli.command import CLI_ACTOR, CommandError, database_pool, policy_store
from gateway.cli.output import print_json
from gateway.cli.parsers import Subparsers, add_action, command_actions
from gateway.storage.policy_store import UnknownTier
from gateway.tiers import PolicyFileError, read_policy_file
from policies.policy import PolicyError, policy_to_document


def register(subparsers: Subparsers) -> None:
    actions = command_actions(subparsers, "policy", help="show and set a tenant's policy")
    show = add_action(actions, "show", _policy_show, help="show the policy in force")
    show.add_argument("tenant", metavar="TENANT_ID")
    policy_set = add_action(
        actions,
        "set",
        _policy_set,
        help="change a tenant's policy (a new version)",
        description="Lay the keys in FILE over the policy in force and store the result as the next version. "
        "Keys FILE does not name keep their value; set a key to null to remove that limit.",
    )
    policy_set.add_argument("tenant", metavar="TENANT_ID")
    policy_set.add_argument(
        "--file", required=True, metavar="FILE", help="a tier-shaped mapping in YAML: only the keys to change"
    )


async def _policy_show(args: argparse.Namespace, dsn: str) -> None:
    """The policy in force for a tenant and where it comes from.

    JSON: ``{"tenant_id", "source", "version", "tier", "policy"}``: ``source`` is ``"tenant"``
    (a stored version), ``"tier"`` or ``"default"``; ``version`` is null unless ``source`` is
    ``"tenant"``; ``policy`` is the tier-shaped document (USD amounts as decimal strings).
    """
    async with database_pool(dsn) as pool, policy_store(pool) as store:
        effective = await store.effective(args.tenant)
        tier = await store.tier_of(args.tenant)
    document = {
        "tenant_id": args.tenant,
        "source": effective.source,
        "version": effective.version,
        "tier": tier,
        "policy": policy_to_document(effective.policy),
    }
    if args.json:
        print_json(document)
        return
    origin = {"tenant": f"version {effective.version}", "tier": f"tier {tier}", "default": "the default tier"}
    print(f"tenant {args.tenant}: policy from {origin[effective.source]}" + (f" (tier: {tier})" if tier else ""))
    print(yaml.safe_dump(document["policy"], sort_keys=False).rstrip())


async def _policy_set(args: argparse.Namespace, dsn: str) -> None:
    """Lay the mapping in ``--file`` over the policy in force; store it as the next version (exit 2 if invalid).

    Keys the file does not name keep their value; ``null`` removes a limit.

    JSON: ``{"tenant_id", "version"}``.
    """
    try:
        mapping = read_policy_file(args.file)
    except PolicyFileError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    async with database_pool(dsn) as pool, policy_store(pool) as store:
        try:
            version = await changes.set_policy(store, args.tenant, mapping, CLI_ACTOR)
        except PolicyError as exc:
            raise CommandError(f"policy file {args.file}: invalid key {exc.key}", exit_code=2) from None
        except UnknownTier as exc:
            raise CommandError(
                f"tenant {args.tenant} is on {exc} (set VOXGATE_POLICY_FILE to the gateway's tiers file); "
                "nothing stored",
                exit_code=2,
            ) from None
    if args.json:
        print_json({"tenant_id": args.tenant, "version": version})
    else:
        print(f"tenant {args.tenant}: policy version {version} stored (the file's keys over the policy in force)")
