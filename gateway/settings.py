"""Settings: small documented groups, read from the environment in one place.

Every variable is listed in the README's configuration table. Settings are built once by
`Settings.from_env()` and passed (injected) to whatever needs them; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """A URL fit for logs and banners: any password replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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


@dataclass(frozen=True)
class ServerSettings:
    """Where the gateway listens and how it treats connections."""

    host: str = "127.0.0.1"  # VOXGATE_HOST
    port: int = 8000  # VOXGATE_PORT
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    max_message_bytes: int = 16 * 1024 * 1024  # VOXGATE_MAX_MESSAGE_BYTES (append events are <= 15 MiB)
    shutdown_grace_seconds: float = 10.0  # VOXGATE_SHUTDOWN_GRACE_SECONDS


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = None  # VOXGATE_DATABASE_URL
    pool_min: int = 1  # VOXGATE_DATABASE_POOL_MIN
    pool_max: int = 10  # VOXGATE_DATABASE_POOL_MAX


@dataclass(frozen=True)
class RedisSettings:
    url: str | None = None  # VOXGATE_REDIS_URL
    key_prefix: str = "voxgate:"  # VOXGATE_REDIS_PREFIX


@dataclass(frozen=True)
class UpstreamSettings:
    """The real Realtime API (or the emulator) and the credentials voxgate holds for it."""

    url: str = "https://api.openai.com/v1"  # VOXGATE_UPSTREAM_URL
    api_key: str | None = field(default=None, repr=False)  # VOXGATE_OPENAI_API_KEY
    organization: str | None = None  # VOXGATE_OPENAI_ORGANIZATION
    project: str | None = None  # VOXGATE_OPENAI_PROJECT
    connect_timeout_seconds: float = 10.0  # VOXGATE_UPSTREAM_CONNECT_TIMEOUT


@dataclass(frozen=True)
class LedgerSettings:
    """The batched ledger writer: how much it buffers and where it spills."""

    buffer_records: int = 50_000  # VOXGATE_LEDGER_BUFFER
    batch_records: int = 500  # VOXGATE_LEDGER_BATCH
    flush_interval_seconds: float = 0.05  # VOXGATE_LEDGER_FLUSH_INTERVAL
    spool_dir: Path | None = None  # VOXGATE_SPOOL_DIR (overflow journal; unset = memory only)


@dataclass(frozen=True)
class SecuritySettings:
    # Keys the OpenAI-Safety-Identifier hash; rotate it and end-user hashes change.
    safety_identifier_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every VOXGATE_* variable; raises SettingsError naming a bad one."""
        env = os.environ if env is None else env
        server = ServerSettings(
            host=env.get("VOXGATE_HOST", "127.0.0.1"),
            port=_int(env, "VOXGATE_PORT", 8000),
            max_message_bytes=_int(env, "VOXGATE_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, minimum=1024),
            shutdown_grace_seconds=_float(env, "VOXGATE_SHUTDOWN_GRACE_SECONDS", 10.0),
        )
        if env.get("VOXGATE_INSTANCE_ID"):
            server = replace(server, instance_id=env["VOXGATE_INSTANCE_ID"])
        secret = env.get("VOXGATE_SAFETY_ID_SECRET")
        spool = env.get("VOXGATE_SPOOL_DIR")
        return cls(
            server=server,
            database=DatabaseSettings(
                url=env.get("VOXGATE_DATABASE_URL") or None,
                pool_min=_int(env, "VOXGATE_DATABASE_POOL_MIN", 1),
                pool_max=_int(env, "VOXGATE_DATABASE_POOL_MAX", 10, minimum=1),
            ),
            redis=RedisSettings(
                url=env.get("VOXGATE_REDIS_URL") or None,
                key_prefix=env.get("VOXGATE_REDIS_PREFIX", "voxgate:"),
            ),
            upstream=UpstreamSettings(
                url=env.get("VOXGATE_UPSTREAM_URL", "https://api.openai.com/v1").rstrip("/"),
                api_key=env.get("VOXGATE_OPENAI_API_KEY") or None,
                organization=env.get("VOXGATE_OPENAI_ORGANIZATION") or None,
                project=env.get("VOXGATE_OPENAI_PROJECT") or None,
                connect_timeout_seconds=_float(env, "VOXGATE_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            ),
            ledger=LedgerSettings(
                buffer_records=_int(env, "VOXGATE_LEDGER_BUFFER", 50_000, minimum=1),
                batch_records=_int(env, "VOXGATE_LEDGER_BATCH", 500, minimum=1),
                flush_interval_seconds=_float(env, "VOXGATE_LEDGER_FLUSH_INTERVAL", 0.05),
                spool_dir=Path(spool) if spool else None,
            ),
            security=SecuritySettings(safety_identifier_secret=secret.encode())
            if secret
            else SecuritySettings(),
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
