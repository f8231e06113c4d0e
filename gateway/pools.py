"""Bounded, blocking connection pools for Redis and Postgres, sized from the settings.

Both pools make a caller wait (up to a timeout) for a free connection instead of opening
more or failing at once: a burst of sessions queues for a few milliseconds, and only a
dependency that is really gone turns into an error (docs/live-state.md, "Pools").

`VOXGATE_REDIS_URL` names the topology by its scheme (docs/live-state.md, "Topologies"):
`redis://`/`rediss://`/`unix://` one Redis, `redis+cluster://` a Redis Cluster,
`redis+sentinel://` a master found through Sentinels (followed across a failover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import DatabaseSettings, RedisSettings

#: What the live state, the call cache and the health checks talk to, whatever the topology.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

HEALTH_CHECK_INTERVAL_S = 30  # an idle pooled Redis connection is PINGed before reuse after this long
# A pooled connection that died while idle (Redis restarted, a network blip) fails its next command
# with a ConnectionError: that command is sent once more on a new connection. Not on a timeout (an
# unanswering Redis must fail within the socket timeout, not twice it). Every live-state script is
# safe to repeat (ids dedupe settles and reservations, leases renew) except a start-rate count,
# which may then count one start twice when a connection dies mid-reply.
REDIS_RETRY = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class RedisTopology:
    """A parsed `VOXGATE_REDIS_URL`: one Redis, a Cluster (seed nodes) or Sentinels (and the master's name)."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    sentinel_auth: bool = False  # sentinel: send the URL's credentials to the sentinels too


def parse_redis_url(url: str) -> RedisTopology:
    """Read the topology from the URL's scheme; raises ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        # redis-py reads the database from the path and quietly takes 0 for one it cannot read
        # (`redis://host:6379/abc`): a typo must not land the state in another database.
        path = urlsplit(url).path.strip("/")
        if scheme in ("redis", "rediss") and path and not path.isdigit():
            raise ValueError(f"the database in the URL's path must be a number, got {unquote(path)!r}")
        return RedisTopology("single", url)
    kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    rest, _, query = rest.partition("?")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    netloc, _, path = location.partition("/")
    username, colon, password = userinfo.partition(":")
    hosts = tuple(_host_port(item, 26379 if kind == "sentinel" else 6379) for item in netloc.split(",") if item)
    if not sep or not hosts:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    segments = [s for s in path.split("/") if s]
    service, db = "", 0
    if kind == "sentinel":
        if not segments:
            raise ValueError("redis+sentinel:// needs the master's name as its path, e.g. /mymaster")
        service = unquote(segments[0])
        db = _int_segment(segments[1] if len(segments) > 1 else "0")
    elif segments:
        raise ValueError("redis+cluster:// takes no path: a Redis Cluster has only database 0")
    return RedisTopology(
        kind,
        url,
        hosts,
        unquote(username) or None,
        unquote(password) if colon else None,
        scheme.startswith("rediss"),
        service,
        db,
        options.get("sentinel_auth", "").lower() in ("1", "true", "yes"),
    )


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        return host, _int_segment(port.lstrip(":") or str(default_port))
    host, colon, port = item.rpartition(":")
    return (host, _int_segment(port)) if colon else (item, default_port)


def _int_segment(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def redis_client(settings: RedisSettings) -> RedisClient:
    """A client for the URL's topology whose pool holds at most `pool_size` connections (per node on a
    cluster) and blocks (bounded) when all are busy (one Redis, Sentinel)."""
    return open_redis(
        settings.url or "",
        pool_size=settings.pool_size,
        pool_timeout=settings.pool_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        retry=REDIS_RETRY,
    )


def open_redis(url: str, *, pool_size: int, pool_timeout: float, socket_timeout: float, retry: Retry) -> RedisClient:
    """The client for `url` (see `parse_redis_url`); connects lazily, on its first command."""
    topology = parse_redis_url(url)
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": socket_timeout,
        "socket_timeout": socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if topology.kind == "single":
        pool = BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=pool_timeout, retry=retry, **timeouts
        )
        return aioredis.Redis.from_pool(pool)  # closing the client closes its pool
    credentials: dict[str, Any] = {"username": topology.username, "password": topology.password}
    if topology.kind == "cluster":
        # A cluster's node pools do not block: past `pool_size` connections to one node a command
        # fails at once (MaxConnectionsError, a RedisError). Batched script calls use one per node.
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts],
            max_connections=pool_size,
            ssl=topology.tls,
            retry=retry,
            **credentials,
            **timeouts,
        )
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": socket_timeout,
        "socket_timeout": socket_timeout,
        **(credentials if topology.sentinel_auth else {}),
    }
    sentinel = Sentinel(list(topology.hosts), sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        topology.service,
        redis_class=SentinelRedis,
        connection_pool_class=BlockingSentinelPool,
        max_connections=pool_size,
        timeout=pool_timeout,
        retry=retry,
        db=topology.db,
        ssl=topology.tls,
        **credentials,
        **timeouts,
    )
    assert isinstance(client, SentinelRedis)
    client.watchers = sentinel
    return client


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (asks the sentinels where the master is on every new connection) with the
    blocking, bounded wait of `BlockingConnectionPool`."""


class SentinelRedis(aioredis.Redis):
    """The master's client; closing it also closes the connections to the sentinels."""

    watchers: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.watchers is not None:
            for watcher in self.watchers.sentinels:
                await watcher.aclose()


class BoundedPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type hints
    """An asyncpg pool whose every `acquire()` (also inside `fetch`, `execute`...) has a timeout."""

    __slots__ = ("acquire_timeout",)

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A connection within `timeout` (default: the pool's) or `TimeoutError`."""
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


def connect_options(settings: DatabaseSettings) -> dict[str, Any]:
    """asyncpg options every connection to `settings.url` needs. Behind PgBouncer in transaction
    mode (`VOXGATE_DATABASE_PGBOUNCER`) no named prepared statement may outlive its transaction,
    since the next one may run on another server connection: the statement cache is off."""
    return {"statement_cache_size": 0} if settings.pgbouncer else {}


async def database_pool(settings: DatabaseSettings, url: str | None = None, *, lazy: bool = False) -> asyncpg.Pool:
    """Open a Postgres pool to `url` (default `settings.url`): `pool_min`..`pool_max` connections
    (none until first use with `lazy`), acquires bounded by `pool_timeout_seconds`."""
    pool = BoundedPool(
        url or settings.url,
        min_size=0 if lazy else min(settings.pool_min, settings.pool_max),
        max_size=settings.pool_max,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout=settings.pool_timeout_seconds,
        **connect_options(settings),
    )
    await pool
    return pool


async def replica_pool(settings: DatabaseSettings) -> asyncpg.Pool | None:
    """The read replica's pool (`VOXGATE_DATABASE_READ_URL`), or None when there is none. It connects on
    first use, so a replica that is down fails the reports that read it (503), not the gateway's start."""
    if not settings.read_url:
        return None
    return await database_pool(settings, settings.read_url, lazy=True)
