"""Bounded, blocking connection pools for Redis and Postgres, sized from the settings.

Both pools make a caller wait (up to a timeout) for a free connection instead of opening
more or failing at once: a burst of sessions queues for a few milliseconds, and only a
dependency that is really gone turns into an error (docs/live-state.md, "Pools").
"""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import DatabaseSettings, RedisSettings

HEALTH_CHECK_INTERVAL_S = 30  # an idle pooled Redis connection is PINGed before reuse after this long
# A pooled connection that died while idle (Redis restarted, a network blip) fails its next command
# with a ConnectionError: that command is sent once more on a new connection. Not on a timeout (an
# unanswering Redis must fail within the socket timeout, not twice it). Every live-state script is
# safe to repeat (ids dedupe settles and reservations, leases renew) except a start-rate count,
# which may then count one start twice when a connection dies mid-reply.
REDIS_RETRY = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    """A client whose pool holds at most `pool_size` connections and blocks (bounded) when all are busy."""
    pool = BlockingConnectionPool.from_url(
        settings.url or "",
        max_connections=settings.pool_size,
        timeout=settings.pool_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=REDIS_RETRY,
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


class BoundedPool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type hints
    """An asyncpg pool whose every `acquire()` (also inside `fetch`, `execute`...) has a timeout."""

    __slots__ = ("acquire_timeout",)

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A connection within `timeout` (default: the pool's) or `TimeoutError`."""
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def database_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    """Open the Postgres pool: `pool_min`..`pool_max` connections, acquires bounded by `pool_timeout_seconds`."""
    pool = BoundedPool(
        settings.url,
        min_size=min(settings.pool_min, settings.pool_max),
        max_size=settings.pool_max,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout=settings.pool_timeout_seconds,
    )
    await pool
    return pool
