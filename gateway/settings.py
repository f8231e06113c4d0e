"""Settings: small documented groups, read from the environment in one place.

Every variable is listed in the README's configuration table. Settings are built once by
`Settings.from_env()` and passed (injected) to whatever needs them; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from gateway.alerts.signing import secret_setting

_T = TypeVar("_T")


def redact_url(url: str) -> str:
    """A URL fit for logs and banners: any password replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _default_tier(raw: str | None) -> str | None:
    if raw is None:
        return "standard"
    return None if raw.strip().lower() in ("", "none") else raw.strip()


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value > 65535:
        raise SettingsError(f"{name} must be a TCP port (0-65535), got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must be >= 0, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _hosts(env: Mapping[str, str], name: str) -> frozenset[str]:
    """A comma-separated list of host names, lower case, without a trailing dot."""
    return frozenset(h.strip().rstrip(".").lower() for h in env.get(name, "").split(",") if h.strip())


@dataclass(frozen=True)
class ServerSettings:
    """Where the gateway listens and how it treats connections."""

    host: str = "127.0.0.1"  # VOXGATE_HOST
    port: int = 8000  # VOXGATE_PORT
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    max_message_bytes: int = 16 * 1024 * 1024  # VOXGATE_MAX_MESSAGE_BYTES (append events are <= 15 MiB)
    shutdown_grace_seconds: float = 10.0  # VOXGATE_SHUTDOWN_GRACE_SECONDS
    # VOXGATE_ABANDON_WAIT_SECONDS: when a session ends with a response still running upstream
    # (the client left, a drain, a policy close), how long voxgate waits for its billed
    # `response.done` after cancelling it (docs/relay.md).
    abandon_wait_seconds: float = 5.0
    # VOXGATE_MAX_HEADER_BYTES: the largest request head (request line + headers) voxgate reads;
    # a bigger one gets 431 and the connection is closed (docs/security.md).
    max_header_bytes: int = 32 * 1024
    # VOXGATE_HEADER_TIMEOUT_SECONDS: how long a client may take to send a whole request head
    # (from connecting, or from the first byte of a keep-alive request); then 408 and close. 0 = no limit.
    header_timeout_seconds: float = 10.0
    # VOXGATE_TLS_CERT_FILE / VOXGATE_TLS_KEY_FILE: serve HTTPS and wss:// with this PEM chain and
    # key (both or neither), reloaded when the files change (gateway/serving_tls.py). Unset = plain.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogSettings:
    """What the process logs and how; secrets are redacted at every level (gateway/logs.py)."""

    level: str = "INFO"  # VOXGATE_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL
    # VOXGATE_LOG_FORMAT: json (one object per line; `serve`'s default, what log pipelines parse)
    # or text (`demo`'s default, for a person at a terminal).
    format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, default_format: str = "json") -> LogSettings:
        env = os.environ if env is None else env
        level = (env.get("VOXGATE_LOG_LEVEL") or "INFO").strip().upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"VOXGATE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        fmt = (env.get("VOXGATE_LOG_FORMAT") or default_format).strip().lower()
        if fmt not in LOG_FORMATS:
            raise SettingsError(f"VOXGATE_LOG_FORMAT must be text or json, got {fmt!r}")
        return cls(level=level, format=fmt)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = None  # VOXGATE_DATABASE_URL
    pool_min: int = 1  # VOXGATE_DATABASE_POOL_MIN
    pool_max: int = 10  # VOXGATE_DATABASE_POOL_MAX
    # VOXGATE_DATABASE_POOL_TIMEOUT_SECONDS: longest wait for a free pooled connection; past it the
    # caller gets a TimeoutError (a transient failure: 503 + retry-after), never an unbounded queue.
    pool_timeout_seconds: float = 5.0
    # VOXGATE_DATABASE_PGBOUNCER: the URL goes through PgBouncer in transaction mode, where a server
    # connection serves one transaction at a time: no statement cache (named prepared statements),
    # nothing session-scoped (docs/live-state.md, "Postgres behind PgBouncer").
    pgbouncer: bool = False
    # VOXGATE_DATABASE_READ_URL: a read replica for reports (the costs API); unset = the main pool.
    read_url: str | None = None
    # VOXGATE_DATABASE_MIGRATION_URL: a direct connection (not through PgBouncer) for `voxgate migrate`
    # and `serve --migrate`, whose advisory lock is session-scoped; unset = VOXGATE_DATABASE_URL.
    migration_url: str | None = None

    @property
    def migrations_url(self) -> str | None:
        """Where migrations run: the direct URL if one is set, else the main one."""
        return self.migration_url or self.url


@dataclass(frozen=True)
class RedisSettings:
    # VOXGATE_REDIS_URL: redis:// or rediss:// (one Redis), redis+cluster://host:port,... (a Redis
    # Cluster), redis+sentinel://host:port,.../<master name> (Sentinel); docs/live-state.md "Topologies".
    url: str | None = None
    key_prefix: str = "voxgate:"  # VOXGATE_REDIS_PREFIX
    # VOXGATE_REDIS_POOL_SIZE: connections per replica, a blocking pool (docs/live-state.md, "Pools").
    # Script calls of one event-loop turn share one round trip, so a burst needs few connections (300
    # sessions opened at once were admitted through 2); 32 leave room for unbatched commands and
    # several batches in flight. One is held by the broadcast subscription.
    pool_size: int = 32
    # VOXGATE_REDIS_POOL_TIMEOUT_SECONDS: longest wait for a free connection before the command fails
    # (a RedisError: fail-open/closed applies). Healthy waits are a few loop turns; a 2 s wait means the
    # connections are stuck on a Redis that stopped answering (socket timeout, also 2 s), so waiting
    # longer would only delay the 503 or fail-open decision.
    pool_timeout_seconds: float = 2.0
    # VOXGATE_REDIS_SOCKET_TIMEOUT_SECONDS: connect and reply timeout of one command, so a Redis that
    # stopped answering is an error within this bound, not a hung session.
    socket_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class UpstreamSettings:
    """The real Realtime API (or the emulator) and the credentials voxgate holds for it."""

    url: str = "https://api.openai.com/v1"  # VOXGATE_UPSTREAM_URL
    api_key: str | None = field(default=None, repr=False)  # VOXGATE_OPENAI_API_KEY
    organization: str | None = None  # VOXGATE_OPENAI_ORGANIZATION
    project: str | None = None  # VOXGATE_OPENAI_PROJECT
    connect_timeout_seconds: float = 10.0  # VOXGATE_UPSTREAM_CONNECT_TIMEOUT
    # VOXGATE_UPSTREAM_CA_FILE: a PEM bundle of CAs trusted for the upstream in addition to the
    # system store (a private gateway, a TLS-inspecting egress proxy); gateway/upstream_tls.py.
    ca_file: Path | None = None
    webhook_secret: str | None = field(default=None, repr=False)  # VOXGATE_OPENAI_WEBHOOK_SECRET: gateway/sip


@dataclass(frozen=True)
class LedgerSettings:
    """The batched ledger writer: how much it buffers and where it spills."""

    buffer_records: int = 50_000  # VOXGATE_LEDGER_BUFFER
    batch_records: int = 500  # VOXGATE_LEDGER_BATCH
    flush_interval_seconds: float = 0.05  # VOXGATE_LEDGER_FLUSH_INTERVAL
    spool_dir: Path | None = None  # VOXGATE_SPOOL_DIR (overflow journal; unset = memory only)
    # VOXGATE_LEDGER_DURABLE_TIMEOUT_SECONDS: how long a billed record may wait for its Postgres
    # commit before it is fsynced to the spool journal instead (docs/relay.md).
    durable_timeout_seconds: float = 1.0


@dataclass(frozen=True)
class EnforcementSettings:
    """Shared live state: how long a replica's session leases live without a heartbeat."""

    lease_ttl_seconds: float = 30.0  # VOXGATE_LEASE_TTL_SECONDS (a dead replica's sessions free up after this)
    reap_interval_seconds: float = 5.0  # VOXGATE_REAP_INTERVAL_SECONDS
    # VOXGATE_CALLS_SCAN_SECONDS: how often a replica looks for WebRTC calls no live replica
    # monitors (its owner died) and takes them over; 0 turns the scan off.
    calls_scan_seconds: float = 2.0


@dataclass(frozen=True)
class SecuritySettings:
    # Keys the OpenAI-Safety-Identifier hash; rotate it and end-user hashes change.
    safety_identifier_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # VOXGATE_JWKS_ALLOWED_HOSTS: comma-separated JWKS hosts exempt from the address checks (and
    # allowed plain http); every other JWKS URL must be https to a public address (docs/security.md).
    jwks_allowed_hosts: frozenset[str] = frozenset()
    # VOXGATE_API_DOCS: serve the OpenAPI document and /docs; off by default (docs/security.md).
    api_docs: bool = False
    # VOXGATE_METRICS_TOKEN: when set, GET /metrics needs `Authorization: Bearer <it>` (its counters
    # carry tenant ids and per-tenant spend); unset, /metrics is open to whoever reaches the port.
    metrics_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AdminSettings:
    """The admin API's JWT verification and the tiers file (docs/admin-api.md)."""

    jwt_secret: str | None = field(default=None, repr=False)  # VOXGATE_ADMIN_JWT_SECRET (HS256)
    jwt_public_key: str | None = field(default=None, repr=False)  # VOXGATE_ADMIN_JWT_PUBLIC_KEY (PEM or path)
    jwks_url: str | None = None  # VOXGATE_ADMIN_JWKS_URL (RS256/ES256 keys)
    jwt_audience: str = "voxgate-admin"  # VOXGATE_ADMIN_JWT_AUDIENCE
    jwt_issuer: str | None = None  # VOXGATE_ADMIN_JWT_ISSUER (checked when set)
    # VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS: the longest `exp - iat` an admin token may have.
    jwt_max_lifetime_seconds: int = 86400
    policy_file: Path | None = None  # VOXGATE_POLICY_FILE (unset = packaged gateway/default_tiers.yaml)
    # VOXGATE_DEFAULT_TIER: tenants with no policy and no tier get it; "" or "none" = unrestricted.
    default_tier: str | None = "standard"


@dataclass(frozen=True)
class PricingSettings:
    """Where prices come from beyond the built-in table (docs/pricing.md)."""

    price_file: Path | None = None  # VOXGATE_PRICE_FILE (YAML; unset = the built-in table only)


@dataclass(frozen=True)
class AlertSettings:
    """Where budget alerts go (docs/finance.md); a tenant's own webhook (admin API) overrides these."""

    webhook_url: str | None = None  # VOXGATE_ALERT_WEBHOOK_URL (unset: alerts are only logged)
    webhook_secret: str | None = field(default=None, repr=False)  # VOXGATE_ALERT_WEBHOOK_SECRET (whsec_…)
    poll_seconds: float = 1.0  # VOXGATE_ALERT_POLL_SECONDS: how often a replica looks for due alerts
    timeout_seconds: float = 10.0  # VOXGATE_ALERT_WEBHOOK_TIMEOUT_SECONDS: one delivery attempt
    sweep_seconds: float = 60.0  # VOXGATE_ALERT_SWEEP_SECONDS: the ledger sweep's period (0: off)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    enforcement: EnforcementSettings = field(default_factory=EnforcementSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    log: LogSettings = field(default_factory=LogSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every VOXGATE_* variable; raises SettingsError naming a bad one."""
        from gateway.serving_tls import tls_files
        from gateway.upstream_tls import upstream_ca_file

        env = os.environ if env is None else env
        server = ServerSettings(
            host=env.get("VOXGATE_HOST", "127.0.0.1"),
            port=_port(env, "VOXGATE_PORT", 8000),
            max_message_bytes=_int(env, "VOXGATE_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024),
            shutdown_grace_seconds=_float(env, "VOXGATE_SHUTDOWN_GRACE_SECONDS", 10.0),
            abandon_wait_seconds=_float(env, "VOXGATE_ABANDON_WAIT_SECONDS", 5.0),
            max_header_bytes=_int(env, "VOXGATE_MAX_HEADER_BYTES", 32 * 1024, minimum=1024),
            header_timeout_seconds=_float(env, "VOXGATE_HEADER_TIMEOUT_SECONDS", 10.0),
        )
        cert, key = _checked(tls_files, env.get("VOXGATE_TLS_CERT_FILE"), env.get("VOXGATE_TLS_KEY_FILE"))
        server = replace(server, tls_cert_file=cert, tls_key_file=key)
        if env.get("VOXGATE_INSTANCE_ID"):
            server = replace(server, instance_id=env["VOXGATE_INSTANCE_ID"])
        secret = env.get("VOXGATE_SAFETY_ID_SECRET")
        spool = env.get("VOXGATE_SPOOL_DIR")
        policy_file = env.get("VOXGATE_POLICY_FILE")
        price_file = env.get("VOXGATE_PRICE_FILE")
        return cls(
            server=server,
            log=LogSettings.from_env(env),
            database=DatabaseSettings(
                url=env.get("VOXGATE_DATABASE_URL") or None,
                pool_min=_int(env, "VOXGATE_DATABASE_POOL_MIN", 1),
                pool_max=_int(env, "VOXGATE_DATABASE_POOL_MAX", 10, minimum=1),
                pool_timeout_seconds=_float(env, "VOXGATE_DATABASE_POOL_TIMEOUT_SECONDS", 5.0),
                pgbouncer=_flag(env, "VOXGATE_DATABASE_PGBOUNCER"),
                read_url=env.get("VOXGATE_DATABASE_READ_URL") or None,
                migration_url=env.get("VOXGATE_DATABASE_MIGRATION_URL") or None,
            ),
            redis=RedisSettings(
                url=env.get("VOXGATE_REDIS_URL") or None,
                key_prefix=env.get("VOXGATE_REDIS_PREFIX", "voxgate:"),
                pool_size=_int(env, "VOXGATE_REDIS_POOL_SIZE", 32, minimum=2),
                pool_timeout_seconds=_float(env, "VOXGATE_REDIS_POOL_TIMEOUT_SECONDS", 2.0),
                socket_timeout_seconds=_float(env, "VOXGATE_REDIS_SOCKET_TIMEOUT_SECONDS", 2.0),
            ),
            upstream=UpstreamSettings(
                url=env.get("VOXGATE_UPSTREAM_URL", "https://api.openai.com/v1").rstrip("/"),
                api_key=env.get("VOXGATE_OPENAI_API_KEY") or None,
                organization=env.get("VOXGATE_OPENAI_ORGANIZATION") or None,
                project=env.get("VOXGATE_OPENAI_PROJECT") or None,
                connect_timeout_seconds=_float(env, "VOXGATE_UPSTREAM_CONNECT_TIMEOUT", 10.0),
                ca_file=_checked(upstream_ca_file, env.get("VOXGATE_UPSTREAM_CA_FILE")),
                webhook_secret=_checked(
                    secret_setting, "VOXGATE_OPENAI_WEBHOOK_SECRET", env.get("VOXGATE_OPENAI_WEBHOOK_SECRET")
                ),
            ),
            ledger=LedgerSettings(
                buffer_records=_int(env, "VOXGATE_LEDGER_BUFFER", 50_000, minimum=1),
                batch_records=_int(env, "VOXGATE_LEDGER_BATCH", 500, minimum=1),
                flush_interval_seconds=_float(env, "VOXGATE_LEDGER_FLUSH_INTERVAL", 0.05),
                spool_dir=Path(spool) if spool else None,
                durable_timeout_seconds=_float(env, "VOXGATE_LEDGER_DURABLE_TIMEOUT_SECONDS", 1.0),
            ),
            enforcement=EnforcementSettings(
                lease_ttl_seconds=_float(env, "VOXGATE_LEASE_TTL_SECONDS", 30.0),
                reap_interval_seconds=_float(env, "VOXGATE_REAP_INTERVAL_SECONDS", 5.0),
                calls_scan_seconds=_float(env, "VOXGATE_CALLS_SCAN_SECONDS", 2.0),
            ),
            security=replace(
                SecuritySettings(safety_identifier_secret=secret.encode()) if secret else SecuritySettings(),
                jwks_allowed_hosts=_hosts(env, "VOXGATE_JWKS_ALLOWED_HOSTS"),
                api_docs=env.get("VOXGATE_API_DOCS", "").strip().lower() in ("1", "true", "yes", "on"),
                metrics_token=env.get("VOXGATE_METRICS_TOKEN") or None,
            ),
            admin=AdminSettings(
                jwt_secret=env.get("VOXGATE_ADMIN_JWT_SECRET") or None,
                jwt_public_key=env.get("VOXGATE_ADMIN_JWT_PUBLIC_KEY") or None,
                jwks_url=env.get("VOXGATE_ADMIN_JWKS_URL") or None,
                jwt_audience=env.get("VOXGATE_ADMIN_JWT_AUDIENCE") or "voxgate-admin",
                jwt_issuer=env.get("VOXGATE_ADMIN_JWT_ISSUER") or None,
                jwt_max_lifetime_seconds=_int(env, "VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS", 86400, minimum=1),
                policy_file=Path(policy_file) if policy_file else None,
                default_tier=_default_tier(env.get("VOXGATE_DEFAULT_TIER")),
            ),
            pricing=PricingSettings(price_file=Path(price_file) if price_file else None),
            alerts=_alert_settings(env),
        )

    def require_services(self) -> None:
        """Fail fast, naming the variable, when `serve` lacks what it needs."""
        missing = [
            name
            for name, value in (
                ("VOXGATE_DATABASE_URL", self.database.url),
                ("VOXGATE_REDIS_URL", self.redis.url),
                ("VOXGATE_OPENAI_API_KEY", self.upstream.api_key),
            )
            if not value
        ]
        if missing:
            raise SettingsError(f"missing required settings: {', '.join(missing)}")
        # A Live sideband's claim and a Realtime call's monitor claim live T/2, and a lease heartbeat
        # comes every T/3: a holder dying just after renewing its claim leaves its session's lease T/6
        # past the claim's lapse, so the takeover (which renews the lease, gateway/webrtc/live_failover.py
        # and gateway/webrtc/sideband.py) must come within T/6 of it.
        if 0 < (scan := self.enforcement.calls_scan_seconds) >= self.enforcement.lease_ttl_seconds / 6:
            raise SettingsError(
                f"VOXGATE_CALLS_SCAN_SECONDS ({scan}) must be 0 or < VOXGATE_LEASE_TTL_SECONDS/6"
                f" ({self.enforcement.lease_ttl_seconds / 6:g}): a dead replica's WebRTC sessions would be reaped first"
            )


def _checked(parse: Callable[..., _T], *raw: str | None) -> _T:
    """`parse(*raw)`, its ValueError (a one-line reason naming the variable) as a SettingsError."""
    try:
        return parse(*raw)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _alert_settings(env: Mapping[str, str]) -> AlertSettings:
    url = env.get("VOXGATE_ALERT_WEBHOOK_URL") or None
    secret = _checked(secret_setting, "VOXGATE_ALERT_WEBHOOK_SECRET", env.get("VOXGATE_ALERT_WEBHOOK_SECRET"))
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise SettingsError("VOXGATE_ALERT_WEBHOOK_URL must be an http(s) URL")
    if url is not None and secret is None:
        raise SettingsError("VOXGATE_ALERT_WEBHOOK_URL needs VOXGATE_ALERT_WEBHOOK_SECRET (a whsec_… secret)")
    return AlertSettings(
        webhook_url=url,
        webhook_secret=secret,
        poll_seconds=_float(env, "VOXGATE_ALERT_POLL_SECONDS", 1.0),
        timeout_seconds=_float(env, "VOXGATE_ALERT_WEBHOOK_TIMEOUT_SECONDS", 10.0),
        sweep_seconds=_float(env, "VOXGATE_ALERT_SWEEP_SECONDS", 60.0),
    )
