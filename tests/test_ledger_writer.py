"""The ledger writer: ordered, idempotent, and nothing lost when Postgres blips."""

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import gateway.ledger.journal as journal_module
import gateway.ledger.writer as ledger_module
from gateway.ledger.records import encode_record
from gateway.ledger.writer import LedgerWriter, SessionEnded, SessionStarted
from gateway.settings import LedgerSettings
from gateway.storage.tenants import TenantDirectory
from policies.actions import RateLimit, RateLimitsRecord, UsageRecord
from tests.support.clock import FakeClock
from tests.support.records import usage_record
from tests.support.tcp_proxy import TcpProxy


def usage(session_id: str, tenant_id: str, n: int, cost: int = 100) -> UsageRecord:
    return usage_record(session_id, tenant_id, f"resp_{session_id}_{n}", time.time(), cost)


def started(session_id: str, tenant_id: str) -> SessionStarted:
    return SessionStarted(
        session_id, tenant_id, None, "websocket", "realtime", "gpt-realtime", None, "test", time.time()
    )


@pytest.fixture
async def tenant_id(pg_pool: asyncpg.Pool) -> str:
    return (await TenantDirectory(pg_pool).create_tenant(f"ledger-{secrets.token_hex(4)}")).id


async def test_records_land_in_order_with_session_totals(pg_pool: asyncpg.Pool, tenant_id: str) -> None:
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(batch_records=3, flush_interval_seconds=0.01))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    for n in range(5):
        writer.submit(usage(sid, tenant_id, n, cost=100 + n))
    writer.submit(RateLimitsRecord(sid, tenant_id, time.time(), (RateLimit("tokens", 100, 50, 1.5),)))
    writer.submit(SessionEnded(sid, time.time(), "client_closed", None))
    assert await writer.drain(10)
    await writer.stop()
    row = await pg_pool.fetchrow("SELECT * FROM realtime_sessions WHERE id = $1", sid)
    assert row["end_reason"] == "client_closed"
    assert (row["responses"], row["cost_micro_usd"], row["input_tokens"]) == (5, 510, 50)
    assert await pg_pool.fetchval("SELECT count(*) FROM rate_limit_snapshots WHERE session_id = $1", sid) == 1


async def test_the_first_end_wins_and_a_later_end_counts_late_usage(pg_pool: asyncpg.Pool, tenant_id: str) -> None:
    # A call hung up on one replica while its sideband, on another, meters one last response.
    hangup = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    sideband = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    hangup.start()
    sideband.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    sideband.submit(started(sid, tenant_id))
    sideband.submit(usage(sid, tenant_id, 1, cost=100))
    assert await sideband.drain(10)
    first_end = time.time()
    hangup.submit(SessionEnded(sid, first_end, "client_hangup", "call rtc_1"))
    assert await hangup.drain(10)
    sideband.submit(usage(sid, tenant_id, 2, cost=250))
    sideband.submit(SessionEnded(sid, first_end + 1, "call_ended", "sideband closed"))
    assert await sideband.drain(10)
    await hangup.stop()
    await sideband.stop()
    row = await pg_pool.fetchrow("SELECT * FROM realtime_sessions WHERE id = $1", sid)
    assert (row["end_reason"], row["end_detail"], row["ended_at"].timestamp()) == (
        "client_hangup",
        "call rtc_1",
        pytest.approx(first_end),
    )
    assert (row["responses"], row["cost_micro_usd"], row["output_tokens"]) == (2, 350, 40)


async def test_same_response_id_twice_is_one_row(pg_pool: asyncpg.Pool, tenant_id: str) -> None:
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings())
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    writer.submit(usage(sid, tenant_id, 1))
    writer.submit(usage(sid, tenant_id, 1))
    assert await writer.drain(10)
    writer.submit(usage(sid, tenant_id, 1))  # a later retry of an already-committed batch
    assert await writer.drain(10)
    await writer.stop()
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) == 1


async def test_a_mixed_batch_releases_its_durable_records_and_writes_everything_once(pg_pool, tenant_id) -> None:
    # One batch: a session already written (a) and one started in the batch (b), whose usage needs
    # its row first; rate limits (not idempotent) and `b`'s end (which totals `b`'s usage) with them.
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=2.0))
    writer.start()
    a, b = f"vgs_{secrets.token_hex(6)}", f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(a, tenant_id))
    assert await writer.drain(10)
    writer.submit(started(b, tenant_id))
    durable = [writer.submit_durable(usage(b, tenant_id, 1, cost=30)), writer.submit_durable(usage(a, tenant_id, 1))]
    writer.submit(RateLimitsRecord(a, tenant_id, time.time(), (RateLimit("tokens", 100, 50, 1.5),)))
    durable.append(writer.submit_durable(usage(a, tenant_id, 2)))
    writer.submit(SessionEnded(b, time.time(), "client_closed", None))
    await asyncio.wait_for(asyncio.gather(*durable), 5)
    assert await writer.drain(10)
    await writer.stop()
    assert writer.stats.parked == 0 and writer.stats.dead_lettered == 0 and writer.stats.journaled == 0
    counts = {
        sid: await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) for sid in (a, b)
    }
    assert counts == {a: 2, b: 1}
    assert await pg_pool.fetchval("SELECT count(*) FROM rate_limit_snapshots WHERE session_id = $1", a) == 1
    row = await pg_pool.fetchrow("SELECT end_reason, responses, cost_micro_usd FROM realtime_sessions WHERE id = $1", b)
    assert (row["end_reason"], row["responses"], row["cost_micro_usd"]) == ("client_closed", 1, 30)


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit((parts.scheme, f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}", parts.path, "", ""))


@pytest.fixture
async def blippable_pool(pg_dsn: str):
    parts = urlsplit(pg_dsn)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    pool = await asyncpg.create_pool(_via(pg_dsn, proxy.port), min_size=1, max_size=2, timeout=2)
    yield proxy, pool
    pool.terminate()
    await proxy.stop()


async def test_postgres_outage_is_retried_and_nothing_is_lost(blippable_pool, pg_pool, tenant_id) -> None:
    proxy, pool = blippable_pool
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    proxy.cut()
    writer.submit(started(sid, tenant_id))
    for n in range(10):
        writer.submit(usage(sid, tenant_id, n))
    assert not await writer.drain(0.5)
    assert writer.stats.retries >= 1 and writer.pending == 11
    proxy.restore()
    assert await writer.drain(15)
    await writer.stop()
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) == 10


async def test_full_buffer_spills_to_disk_and_replays_in_order(blippable_pool, pg_pool, tenant_id, tmp_path: Path):
    proxy, pool = blippable_pool
    writer = LedgerWriter(
        lambda: pool, LedgerSettings(buffer_records=4, batch_records=2, flush_interval_seconds=0.01, spool_dir=tmp_path)
    )
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    proxy.cut()
    writer.submit(started(sid, tenant_id))
    for n in range(20):
        writer.submit(usage(sid, tenant_id, n))
    writer.submit(SessionEnded(sid, time.time(), "client_closed", None))
    assert writer.pending == 4 and writer.stats.spilled == 18
    assert (tmp_path / "ledger-spool.jsonl").exists()
    proxy.restore()
    assert await writer.drain(20)
    await writer.stop()
    assert writer.stats.dropped == 0 and writer.stats.dead_lettered == 0
    row = await pg_pool.fetchrow("SELECT responses, end_reason FROM realtime_sessions WHERE id = $1", sid)
    assert (row["responses"], row["end_reason"]) == (20, "client_closed")
    assert not (tmp_path / "ledger-spool.jsonl").exists()


async def test_without_a_spool_overflow_is_counted_as_dropped(blippable_pool, tenant_id) -> None:
    proxy, pool = blippable_pool
    writer = LedgerWriter(lambda: pool, LedgerSettings(buffer_records=2))
    proxy.cut()
    for n in range(5):
        writer.submit(usage("vgs_x", tenant_id, n))
    assert writer.pending == 2 and writer.stats.dropped == 3


async def test_a_row_postgres_rejects_is_dead_lettered_without_blocking_others(pg_pool, tenant_id, tmp_path) -> None:
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(spool_dir=tmp_path))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    bad = usage(sid, "tnt_no_such_tenant", 1)  # violates the tenant foreign key: never fixable
    writer.submit(bad)
    writer.submit(usage(sid, tenant_id, 2))
    assert await writer.drain(10)
    await writer.stop()
    assert writer.stats.dead_lettered == 1
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) == 1
    assert bad.response_id.encode() in (tmp_path / "deadletter.jsonl").read_bytes()


async def test_stop_spools_what_it_could_not_write(blippable_pool, tenant_id, tmp_path) -> None:
    proxy, pool = blippable_pool
    writer = LedgerWriter(lambda: pool, LedgerSettings(spool_dir=tmp_path))
    writer.start()
    proxy.cut()
    writer.submit(usage("vgs_y", tenant_id, 1))
    await writer.stop(timeout=0.3)
    assert writer.pending == 0 and (tmp_path / "ledger-spool.jsonl").read_bytes().count(b"\n") == 1
    await asyncio.sleep(0)


async def test_a_lone_record_is_written_promptly_without_a_drain(pg_pool, tenant_id) -> None:
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.05))
    writer.start()
    await asyncio.sleep(0.1)  # the writer is idle, waiting for work
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not await pg_pool.fetchval("SELECT count(*) FROM realtime_sessions WHERE id = $1", sid):
        assert loop.time() - t0 < 0.5, "a single record waited for a batch"
        await asyncio.sleep(0.01)
    await writer.stop()


async def test_records_for_a_session_another_replica_has_not_written_yet_wait_for_it(pg_pool, tenant_id) -> None:
    """Replica B meters a call whose session replica A started; A's start record arrives later."""
    here = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    there = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    here.start()
    there.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    here.submit(usage(sid, tenant_id, 1, cost=250))
    here.submit(SessionEnded(sid, time.time(), "call_ended", None))
    assert await here.drain(5)
    assert here.stats.parked == 2 and here.stats.dead_lettered == 0
    there.submit(started(sid, tenant_id))  # the other replica's start lands at last
    assert await there.drain(5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while here.stats.parked and loop.time() < deadline:
        await asyncio.sleep(0.05)
    row = await pg_pool.fetchrow(
        "SELECT end_reason, responses, cost_micro_usd FROM realtime_sessions WHERE id = $1", sid
    )
    assert (row["end_reason"], row["responses"], row["cost_micro_usd"]) == ("call_ended", 1, 250)
    assert here.stats.dead_lettered == 0 and here.stats.written == 2
    await here.stop()
    await there.stop()


async def test_a_session_that_never_appears_is_dead_lettered_after_the_wait(
    pg_pool, tenant_id, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(ledger_module, "ORPHAN_WAIT_SECONDS", 0.3)
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(spool_dir=tmp_path, flush_interval_seconds=0.01))
    writer.start()
    writer.submit(usage("vgs_never", tenant_id, 1))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not writer.stats.dead_lettered and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert writer.stats.dead_lettered == 1 and writer.stats.parked == 0
    assert b"vgs_never" in (tmp_path / "deadletter.jsonl").read_bytes()
    await writer.stop()


async def test_waiting_records_are_spooled_at_stop_and_written_after_a_restart(pg_pool, tenant_id, tmp_path) -> None:
    sid = f"vgs_{secrets.token_hex(6)}"
    first = LedgerWriter(lambda: pg_pool, LedgerSettings(spool_dir=tmp_path, flush_interval_seconds=0.01))
    first.start()
    first.submit(usage(sid, tenant_id, 1, cost=70))
    assert await first.drain(5)
    assert first.stats.parked == 1
    await first.stop()
    assert (tmp_path / "ledger-spool.jsonl").exists()
    other = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01))
    other.start()
    other.submit(started(sid, tenant_id))
    assert await other.drain(5)
    await other.stop()
    second = LedgerWriter(lambda: pg_pool, LedgerSettings(spool_dir=tmp_path, flush_interval_seconds=0.01))
    second.start()
    assert await second.drain(5)
    assert await pg_pool.fetchval("SELECT sum(cost_micro_usd) FROM usage_ledger WHERE session_id = $1", sid) == 70
    await second.stop()


async def test_a_durable_record_resolves_once_committed_and_wakes_a_pausing_writer(pg_pool, tenant_id) -> None:
    # A long batching pause: a durable record must not wait it out.
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=2.0))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))  # written at once; the writer then pauses for 2 s
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    record = usage(sid, tenant_id, 1)
    done = writer.submit_durable(record)
    assert not done.done()
    await asyncio.wait_for(done, 1.0)
    assert loop.time() - t0 < 1.0
    # Resolved means committed: any later reader sees the row.
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE response_id = $1", record.response_id) == 1
    assert writer.stats.journaled == 0 and writer.stats.unconfirmed == 0
    await writer.stop()


async def test_durable_records_postgres_does_not_take_are_fsynced_to_the_spool_together(
    blippable_pool, pg_pool, tenant_id, tmp_path: Path, monkeypatch
) -> None:
    proxy, pool = blippable_pool
    fsyncs: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    timeout = 0.3
    settings = LedgerSettings(flush_interval_seconds=0.01, spool_dir=tmp_path, durable_timeout_seconds=timeout)
    writer = LedgerWriter(lambda: pool, settings)
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    assert await writer.drain(5)
    proxy.cut()
    records = [usage(sid, tenant_id, n) for n in range(3)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiters = [writer.submit_durable(r) for r in records]
    await asyncio.wait_for(asyncio.gather(*waiters), timeout + 1.0)
    assert timeout * 0.9 <= loop.time() - t0 <= timeout + 1.0
    assert len(fsyncs) == 1  # one group, one fsync
    spooled = (tmp_path / "ledger-spool.jsonl").read_bytes()
    assert all(r.response_id.encode() in spooled for r in records)
    assert writer.stats.journaled == 3 and writer.stats.unconfirmed == 0
    # A record submitted durably while the spool is in use is appended behind it and fsynced.
    late = usage(sid, tenant_id, 9)
    await asyncio.wait_for(writer.submit_durable(late), 1.0)
    assert late.response_id.encode() in (tmp_path / "ledger-spool.jsonl").read_bytes() and len(fsyncs) == 2
    proxy.restore()
    assert await writer.drain(20)  # the queue, then the journal's replay: each row once
    await writer.stop()
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) == 4
    assert not (tmp_path / "ledger-spool.jsonl").exists()


async def drained_on(writer: LedgerWriter, clock: FakeClock) -> bool:
    """Move `clock` a second at a time (its retry backoffs) until `writer` is idle; bounded in real time."""
    for _ in range(200):
        if await writer.drain(0):
            return True
        await clock.advance(1.0)
        await asyncio.sleep(0.02)  # let a retry's real round trip to Postgres finish
    return False


async def test_without_a_spool_a_durable_record_is_released_at_the_timeout_and_counted(
    blippable_pool, pg_pool, tenant_id
) -> None:
    proxy, pool = blippable_pool
    clock = FakeClock()
    settings = LedgerSettings(flush_interval_seconds=0.01, durable_timeout_seconds=30.0)
    writer = LedgerWriter(lambda: pool, settings, clock)
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    assert await drained_on(writer, clock)
    proxy.cut()
    record = usage(sid, tenant_id, 1)
    done = writer.submit_durable(record)
    await clock.advance(29.9)  # the timeout runs on the writer's clock, not the wall
    assert not done.done() and writer.stats.unconfirmed == 0
    await clock.advance(0.1)
    assert done.done()
    assert writer.stats.unconfirmed == 1 and writer.pending == 1  # released, not forgotten
    proxy.restore()
    assert await drained_on(writer, clock)
    await writer.stop()
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE response_id = $1", record.response_id) == 1


async def test_a_journal_being_replayed_survives_a_crash_until_its_records_commit(
    blippable_pool, pg_pool, tenant_id, tmp_path
) -> None:
    # A spooled journal is moved into the queue while Postgres is away; the process then dies
    # (its writer task is cancelled, no stop). The journal must still be on disk, and the next
    # start must write every record in it.
    proxy, pool = blippable_pool
    sid = f"vgs_{secrets.token_hex(6)}"
    records = [started(sid, tenant_id), *(usage(sid, tenant_id, n, cost=7) for n in range(3))]
    spool = tmp_path / "ledger-spool.jsonl"
    spool.write_bytes(b"".join(encode_record(r) + b"\n" for r in records))
    proxy.cut()
    crashed = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01, spool_dir=tmp_path))
    crashed.start()
    for _ in range(200):
        if crashed.pending:
            break
        await asyncio.sleep(0.01)
    assert crashed.pending == len(records) and not spool.exists()  # replay began: the journal was moved aside
    assert not await crashed.drain(0.3)
    assert crashed._task is not None
    crashed._task.cancel()  # the process dies here
    with pytest.raises(asyncio.CancelledError):
        await crashed._task
    leftovers = list(tmp_path.glob("ledger-spool.replay-*"))
    assert len(leftovers) == 1 and leftovers[0].read_bytes().count(b"\n") == len(records)

    restarted = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01, spool_dir=tmp_path))
    restarted.start()
    assert await restarted.drain(10)
    await restarted.stop()
    assert await pg_pool.fetchval("SELECT sum(cost_micro_usd) FROM usage_ledger WHERE session_id = $1", sid) == 21
    assert not list(tmp_path.glob("ledger-spool*"))  # committed: nothing left to replay


def started_writer(pool: Any, spool_dir: Path, **settings: Any) -> LedgerWriter:
    """A running writer on `pool` spooling to `spool_dir` (a crash test's first process)."""
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01, spool_dir=spool_dir, **settings))
    writer.start()
    return writer


async def crash(writer: LedgerWriter) -> None:
    """The process dies (SIGKILL): the writer's task is cancelled, no stop, its queue is gone."""
    assert writer._task is not None
    writer._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer._task


async def restart_and_replay(pool: asyncpg.Pool, spool_dir: Path) -> LedgerWriter:
    """The next start on the same spool: replays the journal into `pool`, drains and stops; nothing
    replayed waits aside for a session row that never comes."""
    restarted = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.01, spool_dir=spool_dir))
    restarted.start()
    assert await restarted.drain(10)
    assert restarted.stats.parked == 0
    await restarted.stop()
    return restarted


async def test_a_crash_after_a_journaled_usage_keeps_its_sessions_start_for_the_replay(
    blippable_pool, pg_pool, tenant_id, tmp_path
) -> None:
    # Found by a fault review: Postgres away from a session's start on, its usage timed out and was
    # journaled alone; after a SIGKILL the replay could not write it (the row refers to its session's
    # row, which died in memory), it waited aside and was dead-lettered: usage a client had seen, lost.
    proxy, pool = blippable_pool
    crashed = started_writer(pool, tmp_path, durable_timeout_seconds=0.3)
    sid = f"vgs_{secrets.token_hex(6)}"
    proxy.cut()
    crashed.submit(started(sid, tenant_id))  # not durable: it waits in memory
    records = [usage(sid, tenant_id, n, cost=5) for n in range(2)]
    await asyncio.wait_for(asyncio.gather(*(crashed.submit_durable(r) for r in records)), 2.0)
    assert crashed.stats.journaled == 2
    await crash(crashed)
    proxy.restore()
    await restart_and_replay(pg_pool, tmp_path)
    assert await pg_pool.fetchval("SELECT sum(cost_micro_usd) FROM usage_ledger WHERE session_id = $1", sid) == 10
    assert await pg_pool.fetchval("SELECT count(*) FROM realtime_sessions WHERE id = $1", sid) == 1


async def test_a_connection_killed_mid_write_never_stops_the_writer(pg_dsn, pg_pool, tenant_id) -> None:
    # Found by a fault review: terminating the writer's backend mid-operation can make asyncpg raise
    # InternalClientError ("cannot switch to state ..."), neither a PostgresError nor a connectivity
    # error: the writer task ended, silently, and nothing was written again. The writer's backends are
    # terminated every 20 ms while records stream in; every record lands and the writer still runs.
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2, server_settings={"application_name": "vg_storm"})
    writer = LedgerWriter(lambda: pool, LedgerSettings(flush_interval_seconds=0.001, batch_records=4))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    stop = asyncio.Event()
    kills = 0

    async def storm() -> None:
        nonlocal kills
        while not stop.is_set():
            kills += await pg_pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'vg_storm'"
            )
            await asyncio.sleep(0.02)

    killing = asyncio.create_task(storm())
    try:
        for n in range(400):
            record = usage(sid, tenant_id, n, cost=1)
            if n % 50 == 0:
                await asyncio.wait_for(writer.submit_durable(record), 30)
            else:
                writer.submit(record)
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await killing
    assert kills >= 20
    assert writer.running
    assert await writer.drain(30)
    await writer.stop()
    await pool.close()
    assert await pg_pool.fetchval("SELECT count(*) FROM usage_ledger WHERE session_id = $1", sid) == 400


async def test_a_durable_record_spooled_on_overflow_keeps_its_sessions_start_for_the_replay(
    blippable_pool, pg_pool, tenant_id, tmp_path
) -> None:
    # Found by a review of the test above: with the queue full, a durable record goes straight to the
    # spool (only an fsync to wait for), and its session's start, queued in memory, was not journaled.
    proxy, pool = blippable_pool
    crashed = started_writer(pool, tmp_path, buffer_records=3)
    sid = f"vgs_{secrets.token_hex(6)}"
    proxy.cut()
    crashed.submit(started(sid, tenant_id))
    for _ in range(2):
        crashed.submit(started(f"vgs_{secrets.token_hex(6)}", tenant_id))  # the queue is full now
    await asyncio.wait_for(crashed.submit_durable(usage(sid, tenant_id, 0, cost=7)), 2.0)
    await crash(crashed)
    proxy.restore()
    await restart_and_replay(pg_pool, tmp_path)
    assert await pg_pool.fetchval("SELECT sum(cost_micro_usd) FROM usage_ledger WHERE session_id = $1", sid) == 7


async def test_a_record_asyncpg_cannot_encode_is_dead_lettered_and_the_rest_is_written(
    pg_pool, tenant_id, tmp_path
) -> None:
    # A value past 64 bits fails in asyncpg's encoder with an InterfaceError, which the writer retried
    # as a lost connection, forever, with every record behind it waiting.
    writer = LedgerWriter(lambda: pg_pool, LedgerSettings(flush_interval_seconds=0.01, spool_dir=tmp_path))
    writer.start()
    sid = f"vgs_{secrets.token_hex(6)}"
    writer.submit(started(sid, tenant_id))
    writer.submit(usage(sid, tenant_id, 0, cost=2**70))
    for n in range(1, 4):
        writer.submit(usage(sid, tenant_id, n, cost=3))
    assert await writer.drain(10)
    assert writer.running and writer.stats.dead_lettered == 1
    await writer.stop()
    assert await pg_pool.fetchval("SELECT sum(cost_micro_usd) FROM usage_ledger WHERE session_id = $1", sid) == 9
    assert str(2**70) in (tmp_path / "deadletter.jsonl").read_text()


@pytest.mark.parametrize("end_first", [True, False])
async def test_a_session_end_postgres_did_not_take_is_journaled_and_closes_the_row_after_a_crash(
    blippable_pool, pg_pool, tenant_id, tmp_path, end_first: bool
) -> None:
    # Found by a fault review: after a SIGKILL the journaled usage was replayed, but the session's end,
    # queued in memory, was lost: the row stayed open for good (responses 0 beside its usage rows).
    # The end is journaled after its session's usage (queued when the usage timed out), or on its own
    # timeout (`submit_end`) when nothing else of its session waits.
    proxy, pool = blippable_pool
    crashed = started_writer(pool, tmp_path, durable_timeout_seconds=0.3)
    sid = f"vgs_{secrets.token_hex(6)}"
    end = SessionEnded(sid, time.time(), "client_closed", None)
    if end_first:
        proxy.cut()
        crashed.submit(started(sid, tenant_id))
        durable = crashed.submit_durable(usage(sid, tenant_id, 0, cost=5))
        crashed.submit(end)  # queued before the usage's timeout: journaled after it
        await asyncio.wait_for(durable, 2.0)
    else:  # the usage is in Postgres; Postgres goes away as the session ends
        crashed.submit(started(sid, tenant_id))
        await asyncio.wait_for(crashed.submit_durable(usage(sid, tenant_id, 0, cost=5)), 2.0)
        proxy.cut()
        crashed.submit_end(end)
        await asyncio.sleep(0.6)  # past its own timeout: journaled
    await crash(crashed)
    proxy.restore()
    await restart_and_replay(pg_pool, tmp_path)
    row = await pg_pool.fetchrow(
        "SELECT end_reason, responses, cost_micro_usd FROM realtime_sessions WHERE id = $1", sid
    )
    assert (row["end_reason"], row["responses"], row["cost_micro_usd"]) == ("client_closed", 1, 5)
