"""A bounded share of the Postgres pool for a replica's background loops.

SIP delivery, the translation call sweep, the alert sender and its ledger sweep, the Live failover
scan poll Postgres through the app's pool. Unbounded, they could hold every connection at once (at
start, or while Postgres is slow) and a request would wait out its acquire and get a 503 for no
fault of its own. Every background use of the pool goes through one `BackgroundGate`: at most
`slots` connections are busy with background work at a time; the rest are the requests'.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

# The task holding a slot: a nested use of the gated pool in that task (a query inside a held
# connection's block, a helper called within a round) does not wait for a second slot (a gate of
# one would deadlock on it).
_HOLDER: Final[contextvars.ContextVar[asyncio.Task[Any] | None]] = contextvars.ContextVar(
    "voxgate_background_slot", default=None
)


def background_slots(pool_max: int) -> int:
    """A quarter of the pool (at least one connection) for background work."""
    return max(1, pool_max // 4)


class BackgroundGate:
    """At most `slots` background tasks use `pool` at a time."""

    def __init__(self, pool: asyncpg.Pool, slots: int) -> None:
        self.slots = slots
        self.pool = GatedPool(pool, self)
        self._semaphore = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one background slot for the block (re-entrant within a task)."""
        task = asyncio.current_task()
        if task is not None and _HOLDER.get() is task:
            yield
            return
        async with self._semaphore:
            token = _HOLDER.set(task)
            try:
                yield
            finally:
                _HOLDER.reset(token)


class GatedPool:
    """The pool's query methods as background work sees them: each holds a slot of `gate` while it runs."""

    def __init__(self, pool: asyncpg.Pool, gate: BackgroundGate) -> None:
        self._pool = pool
        self._gate = gate

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        async with self._gate.slot(), self._pool.acquire(timeout=timeout) as conn:
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._gate.slot():
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._gate.slot():
            return await self._pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._gate.slot():
            return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self._gate.slot():
            status: str = await self._pool.execute(query, *args)
            return status

    async def executemany(self, query: str, args: Any) -> None:
        async with self._gate.slot():
            await self._pool.executemany(query, args)
