"""The ledger writer: every record the sessions produce reaches Postgres, off the hot path.

`submit()` is synchronous and O(1): the relay never waits on Postgres. A background task
writes records in order, in batches, one transaction per batch: one commit (one WAL flush)
however many records a held `response.done` shares it with. Writes are idempotent (primary
keys + ON CONFLICT DO NOTHING), so a batch retried after an ambiguous failure never
double-bills.

When Postgres is unreachable the batch stays at the head of the queue and is retried with
backoff. The queue is bounded (`VOXGATE_LEDGER_BUFFER`). When it is full and a spool
directory is configured (`VOXGATE_SPOOL_DIR`), new records go to an append-only JSONL
journal on local disk instead; once Postgres is back and the queue drains, the journal is
replayed in order. Without a spool directory, records that do not fit are dropped, counted
in `stats.dropped` and logged at ERROR: a deployment that cannot afford that sets the spool.
A record Postgres rejects for its content (not for connectivity) is written to
`deadletter.jsonl` in the spool directory (or logged) so one bad row never blocks the rest.

Billed records (usage and transcriptions) may be submitted *durably*: `submit_durable()`
returns a future that resolves once the batch holding the record has committed, and wakes
the writer at once. If Postgres has not committed it within `VOXGATE_LEDGER_DURABLE_TIMEOUT_SECONDS`,
the record is also appended to the spool journal and fsynced (records expiring together share
one fsync, with their sessions' starts not in Postgres yet ahead of them and their queued ends
after them, so a replay after a crash writes each session whole), and the future resolves
then; the record stays queued, and because those writes are idempotent the later commit and
the journal's replay write it once. A session's end (`submit_end`) is journaled the same way
when Postgres does not take it in time, though nobody waits for it. Without a spool
directory the future resolves at the timeout with the record still only in memory: that is
logged at ERROR and counted in `stats.unconfirmed` (docs/relay.md says why it does not hold).

The writer holds one pooled connection while it has work (released after a second idle):
acquiring per batch costs the pool's reset query on every release, one more round trip
through a busy event loop while a `response.done` waits for its commit. A connection that
fails is terminated and the next batch acquires a fresh one; the retry rules stay the same.

One rejection is not final: a record for a session whose row is not in Postgres yet. A
WebRTC call can be metered by another replica than the one that started its session (a
sideband taken over, a secret minted here and attached there), and that replica's
session-start record may still be in its queue or spool. Such records (usage, ends,
session info, transcriptions, rate limits) wait aside, out of the queue's way, and are
retried every second for `ORPHAN_WAIT_SECONDS`; only then are they dead-lettered. At
shutdown they go to the spool, so the next start keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger import sql
from gateway.ledger.batches import (
    CONNECTIVITY_ERRORS,
    UNENCODABLE,
    Flag,
    SessionRowMissing,
    Statements,
    Write,
    grouped,
    in_one_transaction,
    one_statement,
    session_not_there,
)
from gateway.ledger.journal import DurableWaiters, LedgerStats, Spool
from gateway.ledger.records import LedgerRecord, SessionEnded, SessionStarted
from gateway.settings import LedgerSettings
from policies.actions import TranscriptionRecord, UsageRecord

__all__ = ["LedgerRecord", "LedgerStats", "LedgerWriter", "SessionEnded", "SessionStarted"]

log = logging.getLogger("voxgate.ledger")

# How long a record whose session row has not appeared waits before it is dead-lettered,
# and how often it is retried meanwhile.
ORPHAN_WAIT_SECONDS = 600.0
ORPHAN_RETRY_SECONDS = 1.0


def _ignore(seconds: float) -> None:
    pass


# Unforeseen failures of one batch before its records are written one by one (where one that keeps
# failing is dead-lettered), so a record nobody foresaw cannot stall every record behind it.
UNEXPECTED_FAILURES_BEFORE_ONE_BY_ONE = 3


class LedgerWriter:
    """Ordered, batched, bounded, idempotent writes of session records to Postgres."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], settings: LedgerSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._clock = clock  # retry backoff and how long a record waits for its session row
        self._settings = settings
        self._queue: deque[LedgerRecord] = deque()
        self._wakeup = Flag()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = LedgerStats()
        self._spool = Spool(settings.spool_dir, on_append=self._idle.clear)
        # Records waiting for their session row (module docstring): (first failure, record).
        self._parked: deque[tuple[float, LedgerRecord]] = deque()
        self._next_parked_retry = 0.0
        self._durable = DurableWaiters(
            self._spool, self.stats, settings.durable_timeout_seconds, clock, self._sessions_of
        )
        self._urgent = Flag()  # a durable record is queued: skip the batching pause
        self._held: tuple[Any, asyncpg.Pool] | None = None  # (connection, its pool) while busy
        # Told each committed batch's write time in seconds (the app wires voxgate_ledger_write_seconds).
        self.observe_write: Callable[[float], None] = _ignore

    # -- producer side (hot path) ---------------------------------------------------------

    def submit(self, record: LedgerRecord) -> None:
        """Queue a record. Never blocks, never raises."""
        if self._spool.holding or len(self._queue) >= self._settings.buffer_records:
            self._overflow(record)
            return
        self._queue.append(record)
        self._idle.clear()
        # Wake an idle writer at once; a busy one batches what arrives while it writes.
        if len(self._queue) == 1 or len(self._queue) >= self._settings.batch_records:
            self._wakeup.set()

    def submit_durable(self, record: UsageRecord | TranscriptionRecord) -> asyncio.Future[None]:
        """Queue a billed record; the future resolves once it is durable (module docstring).

        Only idempotent records (usage, transcriptions) may be submitted this way: after a
        timeout a record can reach Postgres twice, from the queue and from the journal. The
        future never fails: an outcome that is neither a commit nor a journal entry is logged
        at ERROR and counted.
        """
        if self._spool.holding or len(self._queue) >= self._settings.buffer_records:
            if self._overflow(record):  # appended to the spool behind what is there: it only needs the fsync
                return self._durable.until_synced(record)
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.set_result(None)  # logged and counted by `_overflow`
            return dropped
        self.submit(record)
        done = self._durable.until_commit(record)
        self._urgent.set()
        self._wakeup.set()
        return done

    def submit_end(self, record: SessionEnded) -> None:
        """Queue a session's end, journaled like a billed record if Postgres does not commit it in
        time (nobody waits for it): after a crash its replay still closes the session's row, whose
        usage was journaled. An end is idempotent (the first end wins; every end recomputes totals)."""
        if self._spool.holding or len(self._queue) >= self._settings.buffer_records:
            self._overflow(record)
            return
        self.submit(record)
        self._durable.until_commit(record)

    def _sessions_of(self, records: list[LedgerRecord]) -> tuple[list[LedgerRecord], list[LedgerRecord]]:
        """The starts and the ends of `records`' sessions not yet in Postgres (queued, or waiting
        aside), in order: what a replay needs ahead of them, and what it needs after them."""
        sessions = {getattr(record, "session_id", None) for record in records}
        unwritten = [*self._queue, *(record for _, record in self._parked)]
        starts: list[LedgerRecord] = [
            r for r in unwritten if isinstance(r, SessionStarted) and r.session_id in sessions
        ]
        ends: list[LedgerRecord] = [
            r for r in unwritten if isinstance(r, SessionEnded) and r.session_id in sessions and r not in records
        ]
        return starts, ends

    @property
    def pending(self) -> int:
        """Records not in Postgres yet: queued, and waiting aside for their session's row."""
        return len(self._queue) + len(self._parked)

    @property
    def running(self) -> bool:
        """The writer task is alive (started, not stopped, not ended by an error)."""
        return self._task is not None and not self._task.done()

    def _overflow(self, record: LedgerRecord) -> bool:
        """Append `record` to the spool; False if it had to be dropped (logged and counted)."""
        if self._spool.append(record):
            self.stats.spilled += 1
            return True
        self.stats.dropped += 1
        return False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._spool.recover()
        if self._spool.holding:  # a journal from an earlier run: `drain()` waits for its replay too
            self._idle.clear()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="voxgate-ledger-writer")

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is in Postgres. True if it got there."""
        self._wakeup.set()
        try:
            async with self._clock.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`; spill the rest to the spool."""
        await self.drain(timeout)
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None and task.done():  # it had ended: what it left is spooled below all the same
            if not task.cancelled() and task.exception() is not None:
                log.error("the ledger writer had stopped: %r", task.exception())
        elif task is not None:
            try:  # real time on purpose: shutdown must not hang on a test's frozen clock
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except TimeoutError:  # stuck retrying a dead database: stop it, the spool keeps the rest
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("the ledger writer stopped with an error")
        await self._let_go()
        leftover = [record for _, record in self._parked] + list(self._queue)
        self._parked.clear()
        self.stats.parked = 0
        self._queue.clear()
        spooled: list[bool] = []
        if leftover:
            log.warning("ledger stopping with %d unwritten records; spooling them", len(leftover))
            spooled = [self._overflow(record) for record in leftover]
            if all(spooled):  # what replayed journals still held is in the spool again
                self._spool.forget_replayed()
        else:
            self._spool.forget_replayed()
        await self._durable.close(leftover, spooled)

    # -- consumer side --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff, unexpected = 0.05, 0
        while not self._closing:
            if self._parked and self._clock.monotonic() >= self._next_parked_retry:
                await self._retry_parked()
            if not self._queue and not self._parked and self._spool.replaying:
                self._spool.forget_replayed()
            if not self._queue:
                self._replay_spool()
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                if not await self._wakeup.wait(1.0):  # a second without work: give the connection back
                    await self._let_go()
                continue
            self._urgent.clear()  # durable records that arrive from now on get the next batch at once
            batch = [self._queue[i] for i in range(min(len(self._queue), self._settings.batch_records))]
            started = self._clock.monotonic()
            try:
                await self._write(batch)
            except UNENCODABLE:
                await self._write_one_by_one(batch)
            except CONNECTIVITY_ERRORS as exc:
                self.stats.retries += 1
                log.warning("ledger write failed (%s); retrying in %.2fs", type(exc).__name__, backoff)
                await self._clock.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except (asyncpg.PostgresError, SessionRowMissing):
                await self._write_one_by_one(batch)
            except Exception:  # a failure nobody foresaw must not end the writer (and every write after it)
                self.stats.retries += 1
                self._broken()
                unexpected += 1
                if unexpected < UNEXPECTED_FAILURES_BEFORE_ONE_BY_ONE:
                    log.exception("ledger write failed unexpectedly; retrying in %.2fs on a new connection", backoff)
                    await self._clock.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                log.exception(
                    "ledger write failed unexpectedly %d times; writing the batch record by record", unexpected
                )
                await self._write_one_by_one(batch)  # a record that keeps failing is dead-lettered there
            else:
                self.observe_write(self._clock.monotonic() - started)
                self.stats.written += len(batch)
                if self._durable:
                    for record in batch:
                        self._durable.confirm(record)
            backoff, unexpected = 0.05, 0
            for _ in batch:
                self._queue.popleft()
            if len(self._queue) < self._settings.batch_records and not self._urgent.is_set():
                # Let a batch gather, unless a durable record is waiting for its commit.
                await self._urgent.wait(self._settings.flush_interval_seconds)

    async def _write(self, batch: Iterable[LedgerRecord]) -> None:
        ordered = grouped(batch)
        if len(ordered) == 1 and ordered[0][0] not in sql.MUST_FIND_SESSION:
            # One statement (a `response.done` waiting alone, typically): `executemany` is
            # atomic by itself (asyncpg >= 0.22), so no BEGIN and COMMIT round trips.
            await self._run_on_connection(one_statement, ordered)
            return
        await self._run_on_connection(in_one_transaction, ordered)

    async def _run_on_connection(self, write: Write, ordered: Statements) -> None:
        if self._held is None:
            pool = self._pool()
            self._held = (await pool.acquire(), pool)
        conn = self._held[0]
        try:
            await write(conn, ordered)
        except (asyncpg.PostgresError, SessionRowMissing) as exc:
            if isinstance(exc, CONNECTIVITY_ERRORS):
                self._broken()
            raise  # rolled back; the connection stays good for the next batch
        except BaseException:  # connectivity, or cancelled mid-statement: never reuse it
            self._broken()
            raise

    def _broken(self) -> None:
        """Drop the held connection without a round trip (terminating it hands it back to its pool)."""
        held, self._held = self._held, None
        if held is not None:
            held[0].terminate()

    async def _let_go(self) -> None:
        """Give the held connection back to its pool (idle, or stopping)."""
        held, self._held = self._held, None
        if held is not None:
            conn, pool = held
            try:
                await pool.release(conn)
            except Exception:  # its reset failed: the pool has terminated it
                log.debug("ledger: releasing the writer's connection failed", exc_info=True)

    async def _write_one_by_one(self, batch: list[LedgerRecord]) -> None:
        for record in batch:
            failures = 0
            while True:
                try:
                    await self._write([record])
                except UNENCODABLE as exc:
                    self._dead_letter(record, exc)
                except CONNECTIVITY_ERRORS:
                    self.stats.retries += 1
                    await self._clock.sleep(0.5)
                    continue
                except (asyncpg.ForeignKeyViolationError, SessionRowMissing) as exc:
                    if session_not_there(exc):
                        self._park(record)
                    else:
                        self._dead_letter(record, exc)
                except asyncpg.PostgresError as exc:
                    self._dead_letter(record, exc)
                except Exception as exc:  # unforeseen: retried, then kept aside on disk, never the writer's end
                    self._broken()
                    failures += 1
                    if failures < UNEXPECTED_FAILURES_BEFORE_ONE_BY_ONE:
                        self.stats.retries += 1
                        await self._clock.sleep(0.5)
                        continue
                    log.exception("ledger: a %s keeps failing; dead-lettering it", type(record).__name__)
                    self._dead_letter(record, exc)
                else:
                    self.stats.written += 1
                    self._durable.confirm(record)
                break

    def _park(self, record: LedgerRecord, since: float | None = None) -> None:
        now = self._clock.monotonic()
        if since is None:
            log.warning(
                "ledger: the session of a %s is not written yet; it waits up to %.0f s",
                type(record).__name__,
                ORPHAN_WAIT_SECONDS,
            )
        self._parked.append((now if since is None else since, record))
        self.stats.parked = len(self._parked)
        if not self._next_parked_retry:
            self._next_parked_retry = now + ORPHAN_RETRY_SECONDS

    async def _retry_parked(self) -> None:
        """Retry the waiting records in order; dead-letter those that waited too long."""
        waiting, self._parked = self._parked, deque()
        while waiting:
            since, record = waiting[0]
            try:
                await self._write([record])
            except UNENCODABLE as exc:
                self._dead_letter(record, exc)
            except CONNECTIVITY_ERRORS:
                break  # Postgres is away: everything keeps waiting
            except (asyncpg.ForeignKeyViolationError, SessionRowMissing) as exc:
                if not session_not_there(exc) or self._clock.monotonic() - since >= ORPHAN_WAIT_SECONDS:
                    self._dead_letter(record, exc)
                else:
                    self._park(record, since)
            except asyncpg.PostgresError as exc:
                self._dead_letter(record, exc)
            except Exception:  # unforeseen: everything keeps waiting for the next retry
                log.exception("ledger: retrying records that wait for their session failed")
                self._broken()
                break
            else:
                self.stats.written += 1
                self._durable.confirm(record)
            waiting.popleft()
        for since, record in waiting:
            self._park(record, since)
        self._next_parked_retry = self._clock.monotonic() + ORPHAN_RETRY_SECONDS
        self.stats.parked = len(self._parked)

    def _dead_letter(self, record: LedgerRecord, exc: Exception) -> None:
        self.stats.dead_lettered += 1
        self._durable.confirm(record)  # it will never commit: a durable waiter must not wait for it
        log.error("ledger rejected a %s: %s", type(record).__name__, exc)
        self._spool.dead_letter(record, exc)

    def _replay_spool(self) -> None:
        """Move spooled records back into the queue, oldest first, keeping global order."""
        records = self._spool.take(self._settings.buffer_records)
        self._queue.extend(records)
        self.stats.replayed += len(records)
        if records:
            log.info("replaying %d spooled ledger records", len(records))
