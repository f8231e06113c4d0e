"""The ledger writer: every record the sessions produce reaches Postgres, off the hot path.

`submit()` is synchronous and O(1): the relay never waits on Postgres. A background task
writes records in order, in batches, one transaction per batch. Writes are idempotent
(primary keys + ON CONFLICT DO NOTHING), so a batch retried after an ambiguous failure
never double-bills.

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
one fsync), and the future resolves then; the record stays queued, and because those writes
are idempotent the later commit and the journal's replay write it once. Without a spool
directory the future resolves at the timeout with the record still only in memory: that is
logged at ERROR and counted in `stats.unconfirmed` (docs/relay.md says why it does not hold).

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
import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from gateway.settings import LedgerSettings
from policies.actions import (
    AuditEvent,
    RateLimit,
    RateLimitsRecord,
    SessionInfoRecord,
    TranscriptionRecord,
    UsageRecord,
)

log = logging.getLogger("voxgate.ledger")


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session_id: str
    tenant_id: str
    api_key_id: str | None
    transport: str
    intent: str
    model: str | None
    end_user_hash: str | None
    gateway_instance: str
    started_at: float


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session_id: str
    ended_at: float
    end_reason: str
    end_detail: str | None


LedgerRecord = (
    SessionStarted
    | SessionEnded
    | UsageRecord
    | TranscriptionRecord
    | RateLimitsRecord
    | SessionInfoRecord
    | AuditEvent
)

_KINDS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        SessionStarted,
        SessionEnded,
        UsageRecord,
        TranscriptionRecord,
        RateLimitsRecord,
        SessionInfoRecord,
        AuditEvent,
    )
}

INSERT_SESSION = """
INSERT INTO realtime_sessions
    (id, tenant_id, api_key_id, transport, intent, model, end_user_hash, gateway_instance, started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO NOTHING
"""

UPDATE_SESSION_INFO = """
UPDATE realtime_sessions
SET model = COALESCE($2, model), voice = COALESCE($3, voice),
    upstream_session_id = COALESCE($4, upstream_session_id)
WHERE id = $1
"""

INSERT_USAGE = """
INSERT INTO usage_ledger
    (response_id, session_id, tenant_id, model, status, occurred_at,
     input_tokens, output_tokens, total_tokens,
     input_text_tokens, input_audio_tokens, input_image_tokens,
     cached_text_tokens, cached_audio_tokens, cached_image_tokens,
     output_text_tokens, output_audio_tokens, cost_micro_usd, price_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (response_id) DO NOTHING
"""

INSERT_TRANSCRIPTION = """
INSERT INTO transcription_usage
    (session_id, item_id, content_index, tenant_id, model, occurred_at, usage_type,
     input_text_tokens, input_audio_tokens, output_tokens, duration_ms, cost_micro_usd, price_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (session_id, item_id, content_index) DO NOTHING
"""

INSERT_RATE_LIMIT = """
INSERT INTO rate_limit_snapshots
    (session_id, tenant_id, observed_at, name, limit_value, remaining, reset_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Policy decisions (budget alerts and cuts, cap closes, re-clamps) for the audit trail.
INSERT_AUDIT_EVENT = """
INSERT INTO audit_log (at, actor, tenant_id, action, detail)
VALUES ($1, 'voxgate', $2, $3, $4::jsonb)
"""

# The first end wins the time and reason; every end recomputes the totals from the ledger.
# A call can be ended twice from two replicas (a hangup here, its sideband monitor there),
# and the monitor may meter a last response after the first end: the second end counts it.
END_SESSION = """
UPDATE realtime_sessions s
SET ended_at = COALESCE(s.ended_at, $2),
    end_reason = CASE WHEN s.ended_at IS NULL THEN $3 ELSE s.end_reason END,
    end_detail = CASE WHEN s.ended_at IS NULL THEN $4 ELSE s.end_detail END,
    responses = u.n, input_tokens = u.input_tokens, output_tokens = u.output_tokens,
    cost_micro_usd = u.cost + t.cost
FROM (SELECT count(*)::int AS n, COALESCE(sum(input_tokens), 0)::bigint AS input_tokens,
             COALESCE(sum(output_tokens), 0)::bigint AS output_tokens,
             COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM usage_ledger WHERE session_id = $1) u,
     (SELECT COALESCE(sum(cost_micro_usd), 0)::bigint AS cost
      FROM transcription_usage WHERE session_id = $1) t
WHERE s.id = $1
"""


# The order a batch's statements run in: a session's row first, what refers to it next, its
# end last (the end's totals count the batch's usage). Within a kind, submission order holds.
_PHASE = {
    INSERT_SESSION: 0,
    UPDATE_SESSION_INFO: 1,
    INSERT_USAGE: 2,
    INSERT_TRANSCRIPTION: 2,
    INSERT_RATE_LIMIT: 3,
    INSERT_AUDIT_EVENT: 3,
    END_SESSION: 4,
}

# UPDATEs that must find their session row (else the record waits: module docstring).
_MUST_FIND_SESSION = frozenset({END_SESSION, UPDATE_SESSION_INFO})


def _session_not_there(exc: Exception) -> bool:
    """The rejection means only that the session row is missing (not some other bad reference)."""
    if isinstance(exc, SessionRowMissing):
        return True
    constraint = getattr(exc, "constraint_name", None) or ""
    return constraint.endswith("session_id_fkey")


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _statements(record: LedgerRecord) -> list[tuple[str, tuple[Any, ...]]]:
    """The SQL (and arguments) that persists one record."""
    if isinstance(record, UsageRecord):
        r = record
        return [
            (
                INSERT_USAGE,
                (
                    r.response_id,
                    r.session_id,
                    r.tenant_id,
                    r.model,
                    r.status,
                    _ts(r.occurred_at),
                    r.input_tokens,
                    r.output_tokens,
                    r.total_tokens,
                    r.input_text_tokens,
                    r.input_audio_tokens,
                    r.input_image_tokens,
                    r.cached_text_tokens,
                    r.cached_audio_tokens,
                    r.cached_image_tokens,
                    r.output_text_tokens,
                    r.output_audio_tokens,
                    r.cost_micro_usd,
                    r.price_version,
                ),
            )
        ]
    if isinstance(record, SessionStarted):
        s = record
        return [
            (
                INSERT_SESSION,
                (
                    s.session_id,
                    s.tenant_id,
                    s.api_key_id,
                    s.transport,
                    s.intent,
                    s.model,
                    s.end_user_hash,
                    s.gateway_instance,
                    _ts(s.started_at),
                ),
            )
        ]
    if isinstance(record, SessionEnded):
        return [(END_SESSION, (record.session_id, _ts(record.ended_at), record.end_reason, record.end_detail))]
    if isinstance(record, AuditEvent):
        detail = orjson.dumps({"session_id": record.session_id, **dict(record.detail)}, default=str).decode()
        return [(INSERT_AUDIT_EVENT, (_ts(record.occurred_at), record.tenant_id, record.kind, detail))]
    if isinstance(record, SessionInfoRecord):
        return [(UPDATE_SESSION_INFO, (record.session_id, record.model, record.voice, record.upstream_session_id))]
    if isinstance(record, TranscriptionRecord):
        t = record
        return [
            (
                INSERT_TRANSCRIPTION,
                (
                    t.session_id,
                    t.item_id,
                    t.content_index,
                    t.tenant_id,
                    t.model,
                    _ts(t.occurred_at),
                    t.usage_type,
                    t.input_text_tokens,
                    t.input_audio_tokens,
                    t.output_tokens,
                    t.duration_ms,
                    t.cost_micro_usd,
                    t.price_version,
                ),
            )
        ]
    return [
        (
            INSERT_RATE_LIMIT,
            (
                record.session_id,
                record.tenant_id,
                _ts(record.observed_at),
                lim.name,
                lim.limit,
                lim.remaining,
                lim.reset_seconds,
            ),
        )
        for lim in record.limits
    ]


def encode_record(record: LedgerRecord) -> bytes:
    return orjson.dumps({"kind": type(record).__name__, "data": dataclasses.asdict(record)})


def decode_record(line: bytes) -> LedgerRecord:
    raw = orjson.loads(line)
    cls = _KINDS[raw["kind"]]
    data = raw["data"]
    if cls is RateLimitsRecord:
        data["limits"] = tuple(RateLimit(**lim) for lim in data["limits"])
    record: LedgerRecord = cls(**data)
    return record


# How long a record whose session row has not appeared waits before it is dead-lettered,
# and how often it is retried meanwhile.
ORPHAN_WAIT_SECONDS = 600.0
ORPHAN_RETRY_SECONDS = 1.0


class SessionRowMissing(Exception):
    """An UPDATE of a session row found no row: the session's start is not written yet."""


_CONNECTIVITY_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


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


class LedgerWriter:
    """Ordered, batched, bounded, idempotent writes of session records to Postgres."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], settings: LedgerSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._queue: deque[LedgerRecord] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = LedgerStats()
        spool_dir = settings.spool_dir
        self._spool_path = spool_dir / "ledger-spool.jsonl" if spool_dir else None
        self._dead_letter_path = spool_dir / "deadletter.jsonl" if spool_dir else None
        # Journals moved into the queue by `_replay_spool`: deleted only once all they held committed.
        self._replaying: list[Path] = []
        self._replay_seq = 0
        # Records waiting for their session row (module docstring): (first failure, record).
        self._parked: deque[tuple[float, LedgerRecord]] = deque()
        self._next_parked_retry = 0.0
        # Durable submits not yet confirmed, by record identity (the queue keeps the record alive).
        self._durable: dict[int, tuple[asyncio.Future[None], asyncio.TimerHandle | None]] = {}
        self._urgent = asyncio.Event()  # a durable record is queued: skip the batching pause
        # Durable records to fsync to the spool, and whether each must be appended first.
        self._to_journal: list[tuple[LedgerRecord, bool]] = []
        self._journaling: asyncio.Task[None] | None = None

    # -- producer side (hot path) ---------------------------------------------------------

    def submit(self, record: LedgerRecord) -> None:
        """Queue a record. Never blocks, never raises."""
        if self._spooling or len(self._queue) >= self._settings.buffer_records:
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
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._spooling or len(self._queue) >= self._settings.buffer_records:
            if self._overflow(record):  # appended to the spool behind what is there: it only needs the fsync
                self._durable[id(record)] = (done, None)
                self._to_journal.append((record, False))
                self._journal_soon()
            else:
                done.set_result(None)  # dropped, logged and counted by `_overflow`
            return done
        self.submit(record)
        timer = loop.call_later(self._settings.durable_timeout_seconds, self._durable_timed_out, record)
        self._durable[id(record)] = (done, timer)
        self._urgent.set()
        self._wakeup.set()
        return done

    def _confirm(self, record: LedgerRecord) -> None:
        """`record` is committed (or dead-lettered): release its durable waiter, if any."""
        entry = self._durable.pop(id(record), None)
        if entry is not None:
            done, timer = entry
            if timer is not None:
                timer.cancel()
            if not done.done():
                done.set_result(None)

    def _durable_timed_out(self, record: LedgerRecord) -> None:
        entry = self._durable.get(id(record))
        if entry is None:
            return
        if self._spool_path is None:
            del self._durable[id(record)]
            self.stats.unconfirmed += 1
            log.error(
                "ledger: a %s was not committed within %.1f s and no VOXGATE_SPOOL_DIR is set: released "
                "with the record only in memory",
                type(record).__name__,
                self._settings.durable_timeout_seconds,
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
            group = [(r, write) for r, write in self._to_journal if id(r) in self._durable]  # not committed since
            self._to_journal = []
            if not group:
                continue
            ok = await self._append_and_sync([r for r, write in group if write])
            for record, _ in group:
                entry = self._durable.pop(id(record), None)
                if entry is None:
                    continue  # committed during the fsync
                done, timer = entry
                if timer is not None:
                    timer.cancel()
                if ok:
                    self.stats.journaled += 1
                else:
                    self.stats.unconfirmed += 1
                if not done.done():
                    done.set_result(None)
            if ok:
                log.warning(
                    "ledger: Postgres did not commit %d billed records in time; fsynced them to %s",
                    len(group),
                    self._spool_path,
                )

    async def _append_and_sync(self, records: list[LedgerRecord]) -> bool:
        """Append `records` to the spool and fsync it. False (logged) if the disk refused."""
        assert self._spool_path is not None
        try:
            self._spool_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            log.exception("ledger journal: could not open the spool; billed records stay in memory only")
            return False
        try:
            if records:
                # Written here on the loop, so the bytes are in the file before any replay
                # renames it; only the fsync, which can take milliseconds, runs in a thread.
                os.write(fd, b"".join(encode_record(r) + b"\n" for r in records))
                self._idle.clear()
            await asyncio.to_thread(os.fsync, fd)
        except OSError:
            log.exception("ledger journal: write or fsync failed; billed records stay in memory only")
            return False
        finally:
            os.close(fd)
        return True

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def _spooling(self) -> bool:
        return self._spool_path is not None and self._spool_path.exists()

    def _overflow(self, record: LedgerRecord) -> bool:
        """Append `record` to the spool; False if it had to be dropped (logged and counted)."""
        if self._spool_path is None:
            self.stats.dropped += 1
            log.error("ledger buffer full and no VOXGATE_SPOOL_DIR: dropped a %s", type(record).__name__)
            return False
        try:
            self._spool_path.parent.mkdir(parents=True, exist_ok=True)
            with self._spool_path.open("ab") as fh:
                fh.write(encode_record(record) + b"\n")
            self.stats.spilled += 1
            self._idle.clear()
        except OSError:
            self.stats.dropped += 1
            log.exception("ledger spool write failed: dropped a %s", type(record).__name__)
            return False
        return True

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._recover_replays()
        if self._spooling:  # a journal from an earlier run: `drain()` waits for its replay too
            self._idle.clear()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="voxgate-ledger-writer")

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is in Postgres. True if it got there."""
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what can be flushed within `timeout`; spill the rest to the spool."""
        await self.drain(timeout)
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            except TimeoutError:  # stuck retrying a dead database: stop it, the spool keeps the rest
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        leftover = [record for _, record in self._parked] + list(self._queue)
        self._parked.clear()
        self.stats.parked = 0
        self._queue.clear()
        spooled: list[bool] = []
        if leftover:
            log.warning("ledger stopping with %d unwritten records; spooling them", len(leftover))
            spooled = [self._overflow(record) for record in leftover]
            if all(spooled):  # what replayed journals still held is in the spool again
                self._forget_replayed()
        else:
            self._forget_replayed()
        if self._journaling is not None:
            with contextlib.suppress(Exception):
                await self._journaling
        if self._durable:  # what is left went to the spool just above (or was dropped there, logged)
            waiting = [
                (record, written)
                for record, written in zip(leftover, spooled, strict=True)
                if id(record) in self._durable
            ]
            synced = self._spool_path is not None and await self._append_and_sync([])
            for record, written in waiting:
                ok = synced and written  # a record `_overflow` could not write was dropped, not journaled
                self.stats.journaled += ok
                self.stats.unconfirmed += not ok
                self._confirm(record)
            for done, timer in self._durable.values():
                if timer is not None:
                    timer.cancel()
                if not done.done():
                    done.set_result(None)
            self._durable.clear()

    # -- consumer side --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            if self._parked and asyncio.get_running_loop().time() >= self._next_parked_retry:
                await self._retry_parked()
            if not self._queue and not self._parked and self._replaying:
                self._forget_replayed()
            if not self._queue:
                self._replay_spool()
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
                continue
            self._urgent.clear()  # durable records that arrive from now on get the next batch at once
            batch = [self._queue[i] for i in range(min(len(self._queue), self._settings.batch_records))]
            try:
                await self._write(batch)
            except _CONNECTIVITY_ERRORS as exc:
                self.stats.retries += 1
                log.warning("ledger write failed (%s); retrying in %.2fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except (asyncpg.PostgresError, SessionRowMissing):
                await self._write_one_by_one(batch)
            else:
                self.stats.written += len(batch)
                if self._durable:
                    for record in batch:
                        self._confirm(record)
            backoff = 0.05
            for _ in batch:
                self._queue.popleft()
            if len(self._queue) < self._settings.batch_records and not self._urgent.is_set():
                # Let a batch gather, unless a durable record is waiting for its commit.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._settings.flush_interval_seconds)

    async def _write(self, batch: Iterable[LedgerRecord]) -> None:
        # One statement per kind, in dependency order (`_PHASE`), rows in submission order: a
        # batch of interleaved sessions costs a handful of round trips, not one per record.
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for record in batch:
            for sql, args in _statements(record):
                groups.setdefault(sql, []).append(args)
        async with self._pool().acquire() as conn, conn.transaction():
            for sql, rows in sorted(groups.items(), key=lambda group: _PHASE[group[0]]):
                if sql in _MUST_FIND_SESSION:  # an UPDATE that must find its row
                    for args in rows:
                        if await conn.execute(sql, *args) == "UPDATE 0":
                            raise SessionRowMissing(args[0])
                else:
                    await conn.executemany(sql, rows)

    async def _write_one_by_one(self, batch: list[LedgerRecord]) -> None:
        for record in batch:
            while True:
                try:
                    await self._write([record])
                except _CONNECTIVITY_ERRORS:
                    self.stats.retries += 1
                    await asyncio.sleep(0.5)
                    continue
                except (asyncpg.ForeignKeyViolationError, SessionRowMissing) as exc:
                    if _session_not_there(exc):
                        self._park(record)
                    else:
                        self._dead_letter(record, exc)
                except asyncpg.PostgresError as exc:
                    self._dead_letter(record, exc)
                else:
                    self.stats.written += 1
                    self._confirm(record)
                break

    def _park(self, record: LedgerRecord, since: float | None = None) -> None:
        now = asyncio.get_running_loop().time()
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
        loop = asyncio.get_running_loop()
        waiting, self._parked = self._parked, deque()
        while waiting:
            since, record = waiting[0]
            try:
                await self._write([record])
            except _CONNECTIVITY_ERRORS:
                break  # Postgres is away: everything keeps waiting
            except (asyncpg.ForeignKeyViolationError, SessionRowMissing) as exc:
                if not _session_not_there(exc) or loop.time() - since >= ORPHAN_WAIT_SECONDS:
                    self._dead_letter(record, exc)
                else:
                    self._park(record, since)
            except asyncpg.PostgresError as exc:
                self._dead_letter(record, exc)
            else:
                self.stats.written += 1
                self._confirm(record)
            waiting.popleft()
        for since, record in waiting:
            self._park(record, since)
        self._next_parked_retry = loop.time() + ORPHAN_RETRY_SECONDS
        self.stats.parked = len(self._parked)

    def _dead_letter(self, record: LedgerRecord, exc: Exception) -> None:
        self.stats.dead_lettered += 1
        self._confirm(record)  # it will never commit: a durable waiter must not wait for it
        log.error("ledger rejected a %s: %s", type(record).__name__, exc)
        if self._dead_letter_path is None:
            return
        try:
            self._dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with self._dead_letter_path.open("ab") as fh:
                fh.write(encode_record(record)[:-1] + b',"error":' + orjson.dumps(str(exc)) + b"}\n")
        except OSError:
            log.exception("could not write the ledger dead-letter file")

    def _replay_spool(self) -> None:
        """Move spooled records back into the queue, oldest first, keeping global order.

        The journal is renamed aside, not deleted: it is removed only once every record it held
        has committed (`_forget_replayed`), so a crash mid-replay loses nothing (`_recover_replays`).
        """
        if self._spool_path is None or not self._spool_path.exists():
            return
        self._replay_seq += 1
        replaying = self._spool_path.with_suffix(f".replay-{os.getpid()}-{self._replay_seq}")
        try:
            self._spool_path.rename(replaying)
            lines = replaying.read_bytes().splitlines()
        except OSError:
            log.exception("could not read the ledger spool")
            return
        self._replaying.append(replaying)
        records = [decode_record(line) for line in lines if line.strip()]
        keep, rest = records[: self._settings.buffer_records], records[self._settings.buffer_records :]
        self._queue.extend(keep)
        self.stats.replayed += len(keep)
        if rest:
            with self._spool_path.open("ab") as fh:
                for record in rest:
                    fh.write(encode_record(record) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        if keep:
            log.info("replaying %d spooled ledger records", len(keep))

    def _forget_replayed(self) -> None:
        """Everything the replayed journals held has committed (or was dead-lettered): drop them."""
        for path in self._replaying:
            path.unlink(missing_ok=True)
        self._replaying.clear()

    def _recover_replays(self) -> None:
        """Journals a crashed run was replaying go back in front of the spool, oldest first.

        Records already committed are written again harmlessly: every billed insert is idempotent.
        """
        if self._spool_path is None or not self._spool_path.parent.exists():
            return
        pattern = self._spool_path.stem + ".replay-*"
        orphans = [p for p in self._spool_path.parent.glob(pattern) if p not in self._replaying]
        if not orphans:
            return
        orphans.sort(key=lambda p: p.stat().st_mtime_ns)
        chunks = [p.read_bytes() for p in orphans]
        if self._spool_path.exists():
            chunks.append(self._spool_path.read_bytes())
        merged = self._spool_path.with_suffix(".recovering")
        with merged.open("wb") as fh:
            for chunk in chunks:
                fh.write(chunk if not chunk or chunk.endswith(b"\n") else chunk + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        merged.replace(self._spool_path)
        for path in orphans:
            path.unlink(missing_ok=True)
        log.warning("ledger: recovered %d journal(s) an earlier run was replaying", len(orphans))
