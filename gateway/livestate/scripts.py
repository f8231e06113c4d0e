"""The Lua scripts, package files registered once: EVALSHA, with a NOSCRIPT fallback.

A script is its `.lua` file preceded by the preludes it names (`_common.lua` first), so shared
Lua helpers exist once. SHA1s are computed locally, so EVALSHA works even before `load()`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.pools import RedisClient

_pack_c: Callable[[tuple[Any, ...]], bytes] | None
try:  # a C packer, when redis-py's C parser (`redis[hiredis]`) is installed
    from hiredis import pack_command as _pack_c
except ImportError:  # pragma: no cover - only without hiredis
    _pack_c = None
_PACKABLE = frozenset({str, bytes, int, float})


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str

    @classmethod
    def build(cls, name: str, *preludes: str) -> LuaScript:
        source = "\n".join(_read(f) for f in ("_common.lua", *preludes, f"{name}.lua"))
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_LEASES = "_leases_common.lua"
_BUDGET = "_budget_common.lua"

LEASE_ACQUIRE = LuaScript.build("lease_acquire", _LEASES)
LEASE_HEARTBEAT = LuaScript.build("lease_heartbeat")
LEASE_RELEASE = LuaScript.build("lease_release", _LEASES)
LEASE_COUNT = LuaScript.build("lease_count", _LEASES)
TENANT_REAP = LuaScript.build("tenant_reap", _LEASES, _BUDGET)
INDEX_TOUCH = LuaScript.build("index_touch")
INDEX_DROP = LuaScript.build("index_drop")
START_RATE = LuaScript.build("start_rate")
BUDGET_SPEND = LuaScript.build("budget_spend", _BUDGET)
BUDGET_RESERVE = LuaScript.build("budget_reserve", _BUDGET)
BUDGET_SETTLE = LuaScript.build("budget_settle", _BUDGET)
BUDGET_REBUILD = LuaScript.build("budget_rebuild")
HEADROOM_RECORD = LuaScript.build("headroom_record")
MONITOR_CLAIM = LuaScript.build("monitor_claim")
MONITOR_RELEASE = LuaScript.build("monitor_release")
MONITOR_TAKEN = LuaScript.build("monitor_taken")

ALL_SCRIPTS = (
    LEASE_ACQUIRE,
    LEASE_HEARTBEAT,
    LEASE_RELEASE,
    LEASE_COUNT,
    TENANT_REAP,
    INDEX_TOUCH,
    INDEX_DROP,
    START_RATE,
    BUDGET_SPEND,
    BUDGET_RESERVE,
    BUDGET_SETTLE,
    BUDGET_REBUILD,
    HEADROOM_RECORD,
    MONITOR_CLAIM,
    MONITOR_RELEASE,
    MONITOR_TAKEN,
)

Arg = str | int | float
Call = tuple[LuaScript, Sequence[str], Sequence[Arg]]


# Commands sent in one shared round trip at most; more waiting at once go in further round trips,
# sent concurrently (each on its own pooled connection).
MAX_BATCH = 1_000

# A script call, or a plain command (`None`, (), ("HGETALL", key)) sent in the same round trip.
Op = tuple[LuaScript | None, Sequence[str], Sequence[Arg]]


class ScriptRunner:
    """Runs the package's scripts on one client; reloads a script when Redis forgot it.

    Calls made during one turn of the event loop, by any number of callers, share one pipelined
    round trip (at most `MAX_BATCH` commands each): one pooled connection carries a whole burst,
    so callers do not queue for the pool while the event loop is busy. Each script stays atomic;
    nothing is a transaction. A failure of the round trip (Redis unreachable) is every caller's error.
    """

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        self._sending: set[asyncio.Task[None]] = set()
        # One pooled connection this runner keeps for its round trips (and the loop it is bound to).
        self._held: tuple[Any, asyncio.AbstractEventLoop] | None = None
        self._held_busy = False

    async def load(self) -> None:
        """SCRIPT LOAD every script (one round trip; on a cluster, one per script, sent to every primary)."""
        if isinstance(self.redis, RedisCluster):
            for script in ALL_SCRIPTS:
                await self.redis.script_load(script.source)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for script in ALL_SCRIPTS:
                pipe.script_load(script.source)
            await pipe.execute()

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return (await self._submit([(script, keys, args)]))[0]

    async def run_many(self, calls: Sequence[Call], reads: Sequence[Sequence[Arg]] = ()) -> list[Any]:
        """All calls in one pipelined round trip (not a transaction: each script is atomic), then the
        plain commands `reads` (e.g. `("HGETALL", key)`) in the same round trip; results in that order."""
        ops: list[Op] = [*calls, *((None, (), tuple(command)) for command in reads)]
        return await self._submit(ops) if ops else []

    async def _submit(self, ops: Sequence[Op]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in ops]
        self._queue.extend(zip(ops, futures, strict=True))
        if self._flush_on is not loop:  # at the end of this turn of the loop: every call made meanwhile
            self._flush_on = loop
            loop.call_soon(self._flush)
        return list(await asyncio.gather(*futures))

    def _flush(self) -> None:
        self._flush_on = None
        loop = asyncio.get_running_loop()  # calls left by a loop that closed have no caller any more
        self._queue = [(op, future) for op, future in self._queue if future.get_loop() is loop]
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        batch = [(op, future) for op, future in batch if not future.done()]  # callers that gave up: not sent
        if not batch:
            return
        ops = [op for op, _ in batch]
        try:
            results = await self._pipeline(ops)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # NOSCRIPT means the call did not run, so running it again is safe
                for script in {ops[i][0] for i in missing}:
                    if script is not None:
                        await self.redis.script_load(script.source)
                for i, result in zip(missing, await self._pipeline([ops[i] for i in missing]), strict=True):
                    results[i] = result
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the round trip failed: every caller in it gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _pipeline(self, ops: Sequence[Op]) -> list[Any]:
        """One round trip on the held connection: redis-py's `Pipeline` costs about as much CPU
        again per round trip (a pool acquire and release with its observability, the retry
        wrapper, a reset). A connection failure hands the batch to `_pooled_pipeline`, which
        resends it under the client's retry policy, as a failed pipeline always was."""
        redis = self.redis
        if self._held_busy or isinstance(redis, RedisCluster):
            return await self._pooled_pipeline(ops)
        self._held_busy = True
        commands = [
            tuple(args) if script is None else ("EVALSHA", script.sha, len(keys), *keys, *args)
            for script, keys, args in ops
        ]
        try:
            try:
                conn = await self._connection(redis)
                await conn.send_packed_command(_packed(conn, commands))
                results: list[Any] = []
                for command in commands:
                    try:
                        results.append(await redis.parse_response(conn, str(command[0])))
                    except ResponseError as exc:
                        results.append(exc)
                return results
            except RedisTimeoutError:
                # No answer within the socket timeout: the scripts may well have run, and an
                # unanswering Redis must fail within one timeout, not two (gateway/pools.py).
                await self._drop_held(redis)
                raise
            except (RedisConnectionError, OSError):  # a held connection the server had closed
                await self._drop_held(redis)
                return await self._pooled_pipeline(ops)
            except BaseException:  # cancelled mid-read: its replies may still be on the socket
                await self._drop_held(redis)
                raise
        finally:
            self._held_busy = False

    async def _connection(self, redis: Redis) -> Any:
        loop = asyncio.get_running_loop()
        if self._held is not None and self._held[1] is not loop:  # left by a loop that closed
            self._held = None
        if self._held is None:
            self._held = (await redis.connection_pool.get_connection(), loop)  # type: ignore[no-untyped-call]
        return self._held[0]

    async def _drop_held(self, redis: Redis) -> None:
        held, self._held = self._held, None
        if held is not None:
            await held[0].disconnect(nowait=True)
            await redis.connection_pool.release(held[0])

    async def _pooled_pipeline(self, ops: Sequence[Op]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in ops:
                if script is None:
                    pipe.execute_command(*args)
                else:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


def _packed(conn: Any, commands: list[tuple[Any, ...]]) -> bytes | list[bytes]:
    """The commands in RESP: by hiredis, in C, when every argument is a str, bytes, int or float
    (redis-py's packer encodes argument by argument in Python, ~4x the CPU of a budget call);
    otherwise by redis-py, which also refuses what Redis cannot take (a bool, None)."""
    if _pack_c is not None and all(_PACKABLE.issuperset(map(type, command)) for command in commands):
        return b"".join([_pack_c(command) for command in commands])
    return conn.pack_commands(commands)  # type: ignore[no-any-return]
