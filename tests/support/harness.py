"""A real gateway (uvicorn + Litestar) in front of a real emulator, on loopback."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from emulator import EmulatorConfig, RealtimeEmulator
from gateway.app import create_app, drain
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.server import RunningServer, start_server
from gateway.services import GatewayServices, services_of
from gateway.settings import (
    AdminSettings,
    DatabaseSettings,
    EnforcementSettings,
    LedgerSettings,
    RedisSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)
from gateway.storage.tenants import TenantDirectory

UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(8)


@dataclass
class Gateway:
    server: RunningServer
    app: Any
    settings: Settings

    @property
    def base_url(self) -> str:
        return f"{self.server.http_url}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}/v1/realtime"

    @property
    def services(self) -> GatewayServices:
        return services_of(self.app)

    async def settle(self) -> None:
        """Wait until every session this gateway ended has been written to Postgres."""
        deadline = time.monotonic() + 10
        while len(self.services.live) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await self.services.ledger.drain(10)

    async def stop(self) -> None:
        await self.server.stop()


def gateway_settings(pg_dsn: str, redis_url: str, upstream_url: str, **server: Any) -> Settings:
    return Settings(
        server=replace(ServerSettings(), **{"shutdown_grace_seconds": 0.0, **server}),
        database=DatabaseSettings(url=pg_dsn, pool_max=5),
        redis=RedisSettings(url=redis_url, key_prefix=f"vgtest:{secrets.token_hex(4)}:"),
        upstream=UpstreamSettings(url=upstream_url, api_key=UPSTREAM_KEY, connect_timeout_seconds=3.0),
        ledger=LedgerSettings(flush_interval_seconds=0.01),
        # Tenants are unrestricted unless a test gives them a policy.
        admin=AdminSettings(default_tier=None),
        # Test gateways share one database but not a Redis prefix, so each would see the others'
        # calls as unmonitored: the takeover scan is off unless a test turns it on.
        enforcement=EnforcementSettings(lease_ttl_seconds=5.0, reap_interval_seconds=0.5, calls_scan_seconds=0.0),
    )


async def start_gateway(settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Gateway:
    app = create_app(settings, clock=clock)
    server = await start_server(
        app,
        ws_max_size=settings.server.max_message_bytes,
        before_shutdown=lambda: drain(app),
        realtime_relay=True,
        max_header_bytes=settings.server.max_header_bytes,
        header_timeout_seconds=settings.server.header_timeout_seconds,
    )
    return Gateway(server=server, app=app, settings=settings)


def replica_settings(
    pg_dsn: str, redis_url: str, upstream: str, prefix: str, name: str, **enforcement: Any
) -> Settings:
    """Settings of one replica named `name` of a deployment whose replicas share the live-state `prefix`
    (and the database); `enforcement` overrides the enforcement settings (lease TTL, calls scan...)."""
    settings = gateway_settings(pg_dsn, redis_url, upstream)
    return replace(
        settings,
        redis=replace(settings.redis, key_prefix=prefix),
        server=replace(settings.server, instance_id=name),
        enforcement=replace(settings.enforcement, **enforcement),
    )


async def start_emulator(**config: Any) -> RealtimeEmulator:
    emulator = RealtimeEmulator(EmulatorConfig(api_key=UPSTREAM_KEY, **config))
    await emulator.start(host="127.0.0.1", port=0)
    return emulator


@dataclass
class TenantKey:
    tenant_id: str
    key_id: str
    secret: str = field(repr=False)


async def make_tenant(pool: asyncpg.Pool, prefix: str = "t") -> TenantKey:
    directory = TenantDirectory(pool)
    tenant = await directory.create_tenant(f"{prefix}-{secrets.token_hex(4)}")
    key = await directory.create_key(tenant.id)
    return TenantKey(tenant.id, key.id, key.secret)
