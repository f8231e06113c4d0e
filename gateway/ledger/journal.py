"""The ledger's journal on local disk: the spool, durable waits, and replay after a restart.

The spool (`<VOXGATE_SPOOL_DIR>/ledger-spool.jsonl`) is an append-only JSONL journal of records
that did not fit the writer's queue, or whose durable wait timed out. It is replayed in order
once Postgres is back: a journal being replayed is renamed aside, not deleted, until everything
it held has committed, so a crash mid-replay loses nothing (the next start merges such journals
back in front of the spool). Replaying a record twice is harmless: every billed insert is
idempotent. Records Postgres rejects for their content go to `deadletter.jsonl` beside it.

A durable submit (`DurableWaiters`) resolves its future at the first of: the commit of the batch
holding the record, or, after the durable timeout, the fsync of the spool holding it. Records
expiring together share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import orjson

from gateway.clock import SYSTEM_CLOCK, Clock, Timer
from gateway.ledger.records import LedgerRecord, decode_record, encode_record

log = logging.getLogger("voxgate.ledger")

SPOOL_FILE = "ledger-spool.jsonl"
DEAD_LETTER_FILE = "deadletter.jsonl"


@dataclass
class LedgerStats:
    written: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    retries: int = 0
    journaled: int = 0  # durable records fsynced to the spool because Postgres did not commit in time
    unconfirmed: int = 0  # durable records released unwritten: no commit in time and no spool to fsync
    parked: int = 0  # records now waiting for their session row


class Spool:
    """The journal files in the spool directory (none at all when no directory is configured)."""

    def __init__(self, directory: Path | None, on_append: Callable[[], None]) -> None:
        self.path = directory / SPOOL_FILE if directory else None
        self._dead_letter_path = directory / DEAD_LETTER_FILE if directory else None
        self._on_append = on_append  # records are on disk, not in Postgres: the writer is not idle
        # Journals moved into the queue by `take`: deleted only once all they held committed.
        self._replaying: list[Path] = []
        self._replay_seq = 0

    @property
    def holding(self) -> bool:
        """The spool has records: new ones must queue behind them (order is global)."""
        return self.path is not None and self.path.exists()

    @property
    def replaying(self) -> bool:
        return bool(self._replaying)

    def append(self, record: LedgerRecord) -> bool:
        """Append `record`; False (logged) if there is no spool or the disk refused."""
        if self.path is None:
            log.error("ledger buffer full and no VOXGATE_SPOOL_DIR: dropped a %s", type(record).__name__)
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fh.write(encode_record(record) + b"\n")
            self._on_append()
        except OSError:
            log.exception("ledger spool write failed: dropped a %s", type(record).__name__)
            return False
        return True

    async def append_and_sync(self, records: list[LedgerRecord]) -> bool:
        """Append `records` to the spool and fsync it. False (logged) if the disk refused."""
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            log.exception("ledger journal: could not open the spool; billed records stay in memory only")
            return False
        try:
            if records:
                # Written here on the loop, so the bytes are in the file before any replay
                # renames it; only the fsync, which can take milliseconds, runs in a thread.
                os.write(fd, b"".join(encode_record(r) + b"\n" for r in records))
                self._on_append()
            await asyncio.to_thread(os.fsync, fd)
        except OSError:
            log.exception("ledger journal: write or fsync failed; billed records stay in memory only")
            return False
        finally:
            os.close(fd)
        return True

    def dead_letter(self, record: LedgerRecord, exc: Exception) -> None:
        """Keep a record Postgres rejected, with the reason (only logged without a spool directory)."""
        if self._dead_letter_path is None:
            return
        try:
            self._dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with self._dead_letter_path.open("ab") as fh:
                fh.write(encode_record(record)[:-1] + b',"error":' + orjson.dumps(str(exc)) + b"}\n")
        except OSError:
            log.exception("could not write the ledger dead-letter file")

    def take(self, limit: int) -> list[LedgerRecord]:
        """The spool's oldest `limit` records, to queue again; the rest go back to the spool.

        The journal is renamed aside, not deleted: `forget_replayed` removes it once every record
        it held has committed, so a crash mid-replay loses nothing (`recover`).
        """
        if self.path is None or not self.path.exists():
            return []
        self._replay_seq += 1
        replaying = self.path.with_suffix(f".replay-{os.getpid()}-{self._replay_seq}")
        try:
            self.path.rename(replaying)
            lines = replaying.read_bytes().splitlines()
        except OSError:
            log.exception("could not read the ledger spool")
            return []
        self._replaying.append(replaying)
        records = [decode_record(line) for line in lines if line.strip()]
        keep, rest = records[:limit], records[limit:]
        if rest:
            with self.path.open("ab") as fh:
                for record in rest:
                    fh.write(encode_record(record) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return keep

    def forget_replayed(self) -> None:
        """Everything the replayed journals held has committed (or was dead-lettered): drop them."""
        for path in self._replaying:
            path.unlink(missing_ok=True)
        self._replaying.clear()

    def recover(self) -> None:
        """Journals a crashed run was replaying go back in front of the spool, oldest first.

        Records already committed are written again harmlessly: every billed insert is idempotent.
        """
        if self.path is None or not self.path.parent.exists():
            return
        pattern = self.path.stem + ".replay-*"
        orphans = [p for p in self.path.parent.glob(pattern) if p not in self._replaying]
        if not orphans:
            return
        orphans.sort(key=lambda p: p.stat().st_mtime_ns)
        chunks = [p.read_bytes() for p in orphans]
        if self.path.exists():
            chunks.append(self.path.read_bytes())
        merged = self.path.with_suffix(".recovering")
        with merged.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk if not chunk or chunk.endswith(b"\n") else chunk + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        merged.replace(self.path)
        for path in orphans:
            path.unlink(missing_ok=True)
        log.warning("ledger: recovered %d journal(s) an earlier run was replaying", len(orphans))


class DurableWaiters:
    """The futures of durable submits not yet confirmed, by record identity.

    The writer's queue (or the spool) keeps each record alive, so `id(record)` stays unique
    while it waits. No future ever fails: an outcome that is neither a commit nor a journal
    entry is logged at ERROR and counted in `stats.unconfirmed`.
    """

    def __init__(
        self,
        spool: Spool,
        stats: LedgerStats,
        timeout_s: float,
        clock: Clock = SYSTEM_CLOCK,
        companions: Callable[[list[LedgerRecord]], tuple[list[LedgerRecord], list[LedgerRecord]]] = lambda _: ([], []),
    ) -> None:
        self._spool = spool
        self._stats = stats
        self._timeout_s = timeout_s
        self._clock = clock  # the durable timeout runs on it
        # The unwritten records of the billed ones' sessions, journaled with them: their starts ahead
        # (a usage row refers to its session's row), their ends after (an end totals what came
        # before it), so a replay after a crash writes the session whole.
        self._companions = companions
        self._waiting: dict[int, tuple[asyncio.Future[None], Timer | None]] = {}
        # Durable records to fsync to the spool, and whether each must be appended first.
        self._to_journal: list[tuple[LedgerRecord, bool]] = []
        self._journaling: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def until_commit(self, record: LedgerRecord) -> asyncio.Future[None]:
        """A future for a queued record: its commit, or its journal entry after the timeout."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self._clock.call_later(self._timeout_s, partial(self._timed_out, record))
        self._waiting[id(record)] = (done, timer)
        return done

    def until_synced(self, record: LedgerRecord) -> asyncio.Future[None]:
        """A future for a record just appended to the spool: it only needs the fsync."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[id(record)] = (done, None)
        self._to_journal.append((record, False))
        self._journal_soon()
        return done

    def confirm(self, record: LedgerRecord) -> None:
        """`record` is committed (or dead-lettered): release its waiter, if any."""
        entry = self._waiting.pop(id(record), None)
        if entry is not None:
            _release(entry)

    def _timed_out(self, record: LedgerRecord) -> None:
        entry = self._waiting.get(id(record))
        if entry is None:
            return
        if self._spool.path is None:
            del self._waiting[id(record)]
            self._stats.unconfirmed += 1
            log.error(
                "ledger: a %s was not committed within %.1f s and no VOXGATE_SPOOL_DIR is set: released "
                "with the record only in memory",
                type(record).__name__,
                self._timeout_s,
            )
            entry[0].set_result(None)
            return
        self._to_journal.append((record, True))
        self._journal_soon()

    def _journal_soon(self) -> None:
        if self._journaling is None or self._journaling.done():
            self._journaling = asyncio.get_running_loop().create_task(self._journal(), name="voxgate-ledger-journal")

    async def _journal(self) -> None:
        """Append the durable records that timed out to the spool and fsync it once per group."""
        while self._to_journal:
            group = [(r, write) for r, write in self._to_journal if id(r) in self._waiting]  # not committed since
            self._to_journal = []
            if not group:
                continue
            appended = [r for r, write in group if write]
            # Companions for every record of the group, those spooled on overflow included: replay
            # parks a record that comes before its session's start, so their order does not matter.
            before, after = self._companions([r for r, _ in group])
            ok = await self._spool.append_and_sync([*before, *appended, *after])
            for record, _ in group:
                entry = self._waiting.pop(id(record), None)
                if entry is None:
                    continue  # committed during the fsync
                if ok:
                    self._stats.journaled += 1
                else:
                    self._stats.unconfirmed += 1
                _release(entry)
            if ok:
                log.warning(
                    "ledger: Postgres did not commit %d billed records in time; fsynced them to %s",
                    len(group),
                    self._spool.path,
                )

    async def close(self, leftover: list[LedgerRecord], spooled: list[bool]) -> None:
        """At stop: `leftover` went to the spool (`spooled` says which got there); release everyone."""
        if self._journaling is not None:
            with contextlib.suppress(Exception):  # logged where it failed; the waiters are released below
                await self._journaling
        if not self._waiting:
            return
        waiting = [
            (record, written) for record, written in zip(leftover, spooled, strict=True) if id(record) in self._waiting
        ]
        synced = self._spool.path is not None and await self._spool.append_and_sync([])
        for record, written in waiting:
            ok = synced and written  # a record the spool could not write was dropped, not journaled
            self._stats.journaled += ok
            self._stats.unconfirmed += not ok
            self.confirm(record)
        for entry in self._waiting.values():
            _release(entry)
        self._waiting.clear()


def _release(entry: tuple[asyncio.Future[None], Timer | None]) -> None:
    done, timer = entry
    if timer is not None:
        timer.cancel()
    if not done.done():
        done.set_result(None)
