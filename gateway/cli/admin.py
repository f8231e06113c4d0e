"""Operator commands: ``voxgate migrate | tenant | key | policy | usage``.

Every command reads the database from ``--database-url`` or ``$VOXGATE_DATABASE_URL`` and
exits 0 on success, 1 when the request cannot be honoured (unknown tenant, duplicate name,
database unreachable) and 2 on a usage error (no or malformed database URL, bad argument).
Errors go to stderr as one line, never as a traceback.

Changes (tenant create, key create/revoke, policy set, browser-token keys) write the same
audit rows as the admin API, with actor ``"cli"``; a policy change is also announced on
Redis when ``$VOXGATE_REDIS_URL`` is set, so running gateways apply it to live sessions.

``--json`` output is a stable contract for scripts. Timestamps are ISO 8601 in UTC with a
``Z`` suffix; money is always integer micro-USD (1 USD = 1_000_000) and never a float.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import yaml

from gateway.admin import changes
from gateway.auth.browser import BrowserAuthConfig, BrowserAuthConfigError
from gateway.auth.jwt import parse_allowed_hosts
from gateway.ledger.reports import UsageReport, ledger_for_tenant
from gateway.settings import Settings, SettingsError
from gateway.storage.migrations import MigrationError, apply_migrations, schema_version
from gateway.storage.policy_store import PolicyStore, UnknownTier
from gateway.storage.tenants import ApiKeyInfo, Tenant, TenantDirectory, TenantDirectoryError, TenantNotFound
from gateway.tiers import PolicyFileError, check_default_tier, load_tiers, read_policy_file
from policies.policy import PolicyError, policy_to_document

DATABASE_URL_ENV = "VOXGATE_DATABASE_URL"
CLI_ACTOR = "cli"  # the audit log's actor for changes made with this command
CONNECT_TIMEOUT_SECONDS = 10.0

Action = Callable[[argparse.Namespace, str], Coroutine[Any, Any, None]]
Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failure to report on stderr as one line, with the exit code to return."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate``, ``tenant``, ``key``, ``policy`` and ``usage`` to the ``voxgate`` command."""
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        metavar="DSN",
        help=f"PostgreSQL DSN (default: ${DATABASE_URL_ENV})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common = [database, as_json]

    migrate = subparsers.add_parser("migrate", parents=common, help="apply pending database migrations")
    migrate.set_defaults(handler=_handler(_migrate))

    tenant = subparsers.add_parser("tenant", help="create and list tenants")
    tenant_actions = tenant.add_subparsers(dest="tenant_action", required=True, metavar="ACTION")
    tenant_create = tenant_actions.add_parser("create", parents=common, help="create a tenant")
    tenant_create.add_argument("name", help="unique tenant name")
    tenant_create.add_argument("--tier", help="a tier from the tiers file ($VOXGATE_POLICY_FILE)")
    tenant_create.set_defaults(handler=_handler(_tenant_create))
    tenant_list = tenant_actions.add_parser("list", parents=common, help="list tenants")
    tenant_list.set_defaults(handler=_handler(_tenant_list))
    tenant_jwt = tenant_actions.add_parser(
        "jwt", parents=common, help="set the keys the tenant's browser JWTs are verified with (docs/webrtc.md)"
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
    tenant_jwt.set_defaults(handler=_handler(_tenant_jwt))

    key = subparsers.add_parser("key", help="issue, list and revoke API keys")
    key_actions = key.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    key_create = key_actions.add_parser("create", parents=common, help="issue a key (secret shown once)")
    key_create.add_argument("--tenant", required=True, metavar="TENANT_ID")
    key_create.add_argument("--name", help="a label for humans, e.g. 'staging'")
    key_create.set_defaults(handler=_handler(_key_create))
    key_list = key_actions.add_parser("list", parents=common, help="list a tenant's keys")
    key_list.add_argument("--tenant", required=True, metavar="TENANT_ID")
    key_list.set_defaults(handler=_handler(_key_list))
    key_revoke = key_actions.add_parser("revoke", parents=[database], help="revoke a key for good")
    key_revoke.add_argument("key_id", metavar="KEY_ID")
    key_revoke.set_defaults(handler=_handler(_key_revoke))

    policy = subparsers.add_parser("policy", help="show and set a tenant's policy")
    policy_actions = policy.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    policy_show = policy_actions.add_parser("show", parents=common, help="show the policy in force")
    policy_show.add_argument("tenant", metavar="TENANT_ID")
    policy_show.set_defaults(handler=_handler(_policy_show))
    policy_set = policy_actions.add_parser(
        "set",
        parents=common,
        help="change a tenant's policy (a new version)",
        description="Lay the keys in FILE over the policy in force and store the result as the next version. "
        "Keys FILE does not name keep their value; set a key to null to remove that limit.",
    )
    policy_set.add_argument("tenant", metavar="TENANT_ID")
    policy_set.add_argument(
        "--file", required=True, metavar="FILE", help="a tier-shaped mapping in YAML: only the keys to change"
    )
    policy_set.set_defaults(handler=_handler(_policy_set))

    usage = subparsers.add_parser("usage", parents=common, help="show a tenant's usage and cost")
    usage.add_argument("--tenant", required=True, metavar="TENANT_ID")
    usage.add_argument(
        "--since",
        type=parse_timestamp,
        metavar="ISO8601",
        help="only responses at or after this time (UTC if no offset is given)",
    )
    usage.set_defaults(handler=_handler(_usage))


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 date or timestamp; one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid ISO 8601 timestamp {text!r} (example: 2025-01-31T00:00:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment


def format_usd(micro_usd: int) -> str:
    """Integer micro-USD as dollars with 6 decimals, by integer arithmetic: 1234567 -> "$1.234567"."""
    sign = "-" if micro_usd < 0 else ""
    dollars, fraction = divmod(abs(micro_usd), 1_000_000)
    return f"{sign}${dollars}.{fraction:06d}"


# --- commands -------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace, dsn: str) -> None:
    """Apply pending migrations.

    JSON: ``{"applied": ["0002_x.sql", ...], "schema_version": 2}``.
    """
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        applied = await apply_migrations(conn)
        version = await schema_version(conn)
    finally:
        await conn.close()
    if args.json:
        _print_json({"applied": applied, "schema_version": version})
        return
    for name in applied:
        print(f"applied {name}")
    print(f"schema is at version {version}" + ("" if applied else " (nothing to do)"))


async def _tenant_create(args: argparse.Namespace, dsn: str) -> None:
    """Create a tenant, optionally on a tier (exit 2 for a tier the tiers file lacks).

    JSON: ``{"id", "name", "created_at", "disabled_at"}`` (``disabled_at`` is null), plus
    ``"tier"`` when ``--tier`` was given.
    """
    async with _pool(dsn) as pool, _policy_store(pool) as store:
        try:
            tenant = await changes.create_tenant(pool, store, args.name, args.tier, CLI_ACTOR)
        except UnknownTier as exc:
            raise CommandError(str(exc), exit_code=2) from None
        except ValueError as exc:
            raise CommandError(str(exc), exit_code=2) from None
    if args.json:
        _print_json({**_tenant_json(tenant), **({"tier": args.tier} if args.tier else {})})
    else:
        print(f"created tenant {tenant.id} ({tenant.name})" + (f" on tier {args.tier}" if args.tier else ""))


async def _tenant_list(args: argparse.Namespace, dsn: str) -> None:
    """List tenants, oldest first.

    JSON: a list of ``{"id", "name", "created_at", "disabled_at"}``.
    """
    async with _pool(dsn) as pool:
        directory = TenantDirectory(pool)
        tenants = await directory.list_tenants()
    if args.json:
        _print_json([_tenant_json(t) for t in tenants])
        return
    _print_table(
        ("ID", "NAME", "CREATED", "STATUS"),
        [(t.id, t.name, _iso(t.created_at), "disabled" if t.disabled else "active") for t in tenants],
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
    async with _pool(dsn) as pool:
        await _require_tenant(TenantDirectory(pool), args.tenant)
        if args.clear:
            cleared = await changes.clear_browser_auth(pool, args.tenant, CLI_ACTOR)
            if args.json:
                _print_json({"tenant_id": args.tenant, "cleared": cleared})
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
    until = _iso(info.previous_valid_until)
    summary = {
        "tenant_id": args.tenant,
        "hs256": secret is not None,
        "jwks_url": args.jwks_url,
        "audience": args.audience,
        "previous_hs256_key_id": info.previous_hs256_key_id,
        "previous_valid_until": until,
    }
    if args.json:
        _print_json(summary)
        return
    kinds = " and ".join(k for k, on in (("HS256 secret", secret is not None), ("JWKS URL", args.jwks_url)) if on)
    print(f"browser tokens of {args.tenant} are verified with its {kinds} (aud {args.audience!r})")
    if until is not None:
        print(f"the previous HS256 secret ({info.previous_hs256_key_id}) stays valid until {until}")


async def _key_create(args: argparse.Namespace, dsn: str) -> None:
    """Issue a key; the secret is printed this once and cannot be recovered later.

    JSON: ``{"id", "tenant_id", "name", "prefix", "secret", "created_at"}``.
    """
    async with _pool(dsn) as pool:
        issued = await changes.create_key(pool, args.tenant, args.name, CLI_ACTOR)
    if args.json:
        _print_json(
            {
                "id": issued.id,
                "tenant_id": issued.tenant_id,
                "name": issued.name,
                "prefix": issued.prefix,
                "secret": issued.secret,
                "created_at": _iso(issued.created_at),
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
    async with _pool(dsn) as pool:
        directory = TenantDirectory(pool)
        await _require_tenant(directory, args.tenant)
        keys = await directory.list_keys(args.tenant)
    if args.json:
        _print_json([_key_json(k) for k in keys])
        return
    _print_table(
        ("ID", "PREFIX", "NAME", "STATUS", "CREATED", "LAST USED"),
        [
            (
                k.id,
                k.prefix + "...",
                k.name or "",
                _key_status(k),
                _iso(k.created_at),
                _iso(k.last_used_at) or "never",
            )
            for k in keys
        ],
    )


async def _key_revoke(args: argparse.Namespace, dsn: str) -> None:
    """Revoke a key. Exit 1 if there is no such key or it is already revoked."""
    async with _pool(dsn) as pool:
        revoked = await changes.revoke_key(pool, args.key_id, CLI_ACTOR)
    if not revoked:
        raise CommandError(f"no active key with id {args.key_id!r}")
    print(f"revoked key {args.key_id}")


async def _policy_show(args: argparse.Namespace, dsn: str) -> None:
    """The policy in force for a tenant and where it comes from.

    JSON: ``{"tenant_id", "source", "version", "tier", "policy"}``: ``source`` is ``"tenant"``
    (a stored version), ``"tier"`` or ``"default"``; ``version`` is null unless ``source`` is
    ``"tenant"``; ``policy`` is the tier-shaped document (USD amounts as decimal strings).
    """
    async with _pool(dsn) as pool, _policy_store(pool) as store:
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
        _print_json(document)
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
    async with _pool(dsn) as pool, _policy_store(pool) as store:
        try:
            version = await store.set(args.tenant, mapping, CLI_ACTOR)
        except PolicyError as exc:
            raise CommandError(f"policy file {args.file}: invalid key {exc.key}", exit_code=2) from None
    if args.json:
        _print_json({"tenant_id": args.tenant, "version": version})
    else:
        print(f"tenant {args.tenant}: policy version {version} stored (the file's keys over the policy in force)")


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
    async with _pool(dsn) as pool:
        await _require_tenant(TenantDirectory(pool), args.tenant)
        report = await ledger_for_tenant(pool, args.tenant, args.since)
    if args.json:
        _print_json(_usage_json(report))
    else:
        _print_usage(report)


# --- plumbing -------------------------------------------------------------------------------


def _handler(action: Action) -> Handler:
    """Wrap an async command: resolve the database, run it, turn failures into exit codes."""

    def handler(args: argparse.Namespace) -> int:
        dsn = args.database_url or os.environ.get(DATABASE_URL_ENV)
        if not dsn:
            _error(f"set {DATABASE_URL_ENV} (or run `voxgate demo`)")
            return 2
        try:
            asyncio.run(action(args, dsn))
        except CommandError as exc:
            _error(str(exc))
            return exc.exit_code
        except (TenantDirectoryError, MigrationError) as exc:
            _error(str(exc))
            return 1
        except asyncpg.UndefinedTableError:
            _error("the database has no voxgate schema yet; run `voxgate migrate` first")
            return 1
        except asyncpg.PostgresError as exc:
            _error(f"database error: {exc}")
            return 1
        except asyncpg.ClientConfigurationError as exc:
            _error(f"invalid database URL: {exc}")
            return 2
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            # The DSN is not echoed: it may carry a password.
            _error(f"cannot reach the database: {exc}")
            return 1
        return 0

    return handler


@asynccontextmanager
async def _pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def _policy_store(pool: asyncpg.Pool) -> AsyncIterator[PolicyStore]:
    """A PolicyStore over the tiers file; it publishes changes when $VOXGATE_REDIS_URL is set."""
    try:
        settings = Settings.from_env()
        tiers = load_tiers(settings.admin.policy_file)
        check_default_tier(tiers, settings.admin.default_tier, settings.admin.policy_file)
    except (SettingsError, PolicyFileError) as exc:
        raise CommandError(str(exc), exit_code=2) from None
    redis = aioredis.from_url(settings.redis.url) if settings.redis.url else None
    try:
        yield PolicyStore(pool, tiers, settings.admin.default_tier, redis, settings.redis.key_prefix)
    finally:
        if redis is not None:
            await redis.aclose()


async def _require_tenant(directory: TenantDirectory, tenant_id: str) -> None:
    if await directory.get_tenant(tenant_id) is None:
        raise TenantNotFound(f"no tenant with id {tenant_id!r}")


def _error(message: str) -> None:
    print(f"voxgate: error: {message}", file=sys.stderr)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    return _iso(value) if isinstance(value, datetime) else value


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str | None]]) -> None:
    cells = [list(headers), *[[cell or "" for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": _iso(tenant.created_at),
        "disabled_at": _iso(tenant.disabled_at),
    }


def _key_status(key: ApiKeyInfo) -> str:
    return "revoked" if key.revoked else "active"


def _key_json(key: ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "prefix": key.prefix,
        "status": _key_status(key),
        "created_at": _iso(key.created_at),
        "revoked_at": _iso(key.revoked_at),
        "last_used_at": _iso(key.last_used_at),
    }


def _usage_json(report: UsageReport) -> dict[str, Any]:
    return {
        "tenant_id": report.tenant_id,
        "since": _iso(report.since),
        "responses": [
            {name: _json_value(value) for name, value in dataclasses.asdict(row).items()} for row in report.rows
        ],
        "totals": dataclasses.asdict(report.totals),
        "transcription": dataclasses.asdict(report.transcription),
        "total_cost_micro_usd": report.total_cost_micro_usd,
    }


def _print_usage(report: UsageReport) -> None:
    _print_table(
        ("TIME", "MODEL", "STATUS", "INPUT", "OUTPUT", "COST micro-USD", "COST USD"),
        [
            (
                _iso(row.occurred_at),
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
