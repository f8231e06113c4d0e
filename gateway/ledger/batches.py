"""How the ledger writer's batches reach Postgres: their statements, grouped, the errors that
decide between retrying a batch and writing it record by record, and the flag the writer
waits on between batches (gateway.ledger.writer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from gateway.ledger import sql
from gateway.ledger.records import LedgerRecord

Statements = list[tuple[str, list[tuple[Any, ...]]]]


class SessionRowMissing(Exception):
    """An UPDATE of a session row found no row: the session's start is not written yet."""


def session_not_there(exc: Exception) -> bool:
    """The rejection means only that the session row is missing (not some other bad reference)."""
    if isinstance(exc, SessionRowMissing):
        return True
    constraint = getattr(exc, "constraint_name", None) or ""
    return constraint.endswith("session_id_fkey")


# A value asyncpg cannot encode for its column (an int past 64 bits, say): the record's fault, though
# asyncpg makes it an InterfaceError, which `CONNECTIVITY_ERRORS` retries. Checked first: never retried.
UNENCODABLE = asyncpg.exceptions._base.DataError

CONNECTIVITY_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's protocol caught mid-operation by a backend that was terminated ("cannot switch to
    # state 15; another operation is in progress"): the connection is unusable, the record is fine.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # Not the record's fault, so retried rather than dead-lettered: a deadlock or serialization
    # failure between replicas' writers upserting the same rollup rows (migration 0008), too many
    # connections, a statement cancelled by the server.
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.QueryCanceledError,
)


Write = Callable[[Any, Statements], Awaitable[None]]


async def one_statement(conn: Any, ordered: Statements) -> None:
    if ordered[0][0] in sql.SESSION_LOCKED:  # its session locks hold until a commit
        await in_one_transaction(conn, ordered)
        return
    await conn.executemany(*ordered[0])


async def in_one_transaction(conn: Any, ordered: Statements) -> None:
    async with conn.transaction():
        for statement, rows in ordered:
            if statement in sql.SESSION_LOCKED:  # sessions locked in one order: no deadlock between writers
                await conn.executemany(sql.LOCK_SESSION, [(s,) for s in sorted({args[0] for args in rows})])
            if statement in sql.MUST_FIND_SESSION:  # an UPDATE that must find its row
                for args in rows:
                    if await conn.execute(statement, *args) == "UPDATE 0":
                        raise SessionRowMissing(args[0])
            else:
                await conn.executemany(statement, rows)


def grouped(batch: Iterable[LedgerRecord]) -> Statements:
    """One statement per kind, in dependency order (`sql.PHASE`), rows in submission order: a
    batch of interleaved sessions costs a handful of round trips, not one per record."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for record in batch:
        for statement, args in sql.statements(record):
            groups.setdefault(statement, []).append(args)
    return sorted(groups.items(), key=lambda group: sql.PHASE[group[0]])


class Flag:
    """An `asyncio.Event` for one waiting task, with a timeout that costs no task of its own.

    `asyncio.wait_for(event.wait(), t)` (Python 3.11) runs the wait as a separate task: a task
    and a timer per wait, and one more turn of the event loop between `set()` and the waiter
    running, which a held `response.done` pays while the loop is busy. Here `set()` resolves
    the waiter's future directly."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, seconds: float) -> bool:
        """Until set or `seconds` passed; True if set."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._flag


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
