"""The call cache every replica reads before Postgres: a Redis hash per call, or process memory.

Postgres (`gateway.webrtc.calls_store`) is the record; the cache only saves the sideband monitor
and the hangup route a database round trip. A miss, an expired entry or an unreachable Redis all
read as "not cached": the store falls back to Postgres and refills it. `RedisCallCache` is shared
by every replica (`<prefix>call:<call_id>`); `MemoryCallCache` serves one process, with the same
interface, so the store runs the same code with or without Redis.
"""

from __future__ import annotations

import abc
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

from redis.exceptions import RedisError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.pools import RedisClient
from gateway.webrtc.calls_store import Call

log = logging.getLogger("voxgate.calls")

CALL_CACHE_TTL_S: Final = 24 * 3600
MEMORY_CACHE_CALLS: Final = 10_000  # calls one process remembers before it forgets the least recently used


class CallCache(abc.ABC):
    """Cached calls by id. Never raises: a cache that cannot answer is a miss."""

    @abc.abstractmethod
    async def get(self, call_id: str) -> Call | None:
        """The cached call, or None (not cached, expired, unreadable)."""

    @abc.abstractmethod
    async def put(self, call: Call) -> None:
        """Cache `call` for `CALL_CACHE_TTL_S`."""

    @abc.abstractmethod
    async def drop(self, call_id: str) -> None:
        """Forget the call (it changed in Postgres); the next read refills it."""


class RedisCallCache(CallCache):
    """A Redis hash per call, shared by every replica."""

    def __init__(self, redis: RedisClient, key_prefix: str = "voxgate:") -> None:
        self._redis = redis
        self._prefix = key_prefix

    def key(self, call_id: str) -> str:
        return f"{self._prefix}call:{call_id}"

    async def get(self, call_id: str) -> Call | None:
        try:
            raw: dict[Any, Any] = await self._redis.hgetall(self.key(call_id))  # type: ignore[misc,unused-ignore]
        except RedisError as exc:
            log.warning("call cache unreachable (%s); reading %s from Postgres", exc, call_id)
            return None
        return _call_from_hash(call_id, raw) if raw else None

    async def put(self, call: Call) -> None:
        key = self.key(call.call_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=_call_to_hash(call))  # type: ignore[arg-type]
                pipe.expire(key, CALL_CACHE_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not cache call %s: %s", call.call_id, exc)

    async def drop(self, call_id: str) -> None:
        try:
            await self._redis.delete(self.key(call_id))
        except RedisError as exc:  # the cached row shows the call active until its cache TTL
            log.warning("could not drop the cached row of ended call %s: %s", call_id, exc)


class MemoryCallCache(CallCache):
    """Calls cached in this process, least recently used forgotten first."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK, capacity: int = MEMORY_CACHE_CALLS) -> None:
        self._clock = clock
        self._capacity = capacity
        self._calls: OrderedDict[str, tuple[float, Call]] = OrderedDict()  # id -> (expires at, call)

    async def get(self, call_id: str) -> Call | None:
        entry = self._calls.get(call_id)
        if entry is None:
            return None
        if entry[0] <= self._clock.monotonic():
            del self._calls[call_id]
            return None
        self._calls.move_to_end(call_id)
        return entry[1]

    async def put(self, call: Call) -> None:
        self._calls[call.call_id] = (self._clock.monotonic() + CALL_CACHE_TTL_S, call)
        self._calls.move_to_end(call.call_id)
        while len(self._calls) > self._capacity:
            self._calls.popitem(last=False)

    async def drop(self, call_id: str) -> None:
        self._calls.pop(call_id, None)


def _call_to_hash(call: Call) -> dict[str, str]:
    return {
        "tenant_id": call.tenant_id,
        "session_id": call.session_id,
        "safety_id": call.safety_id,
        "source": call.source,
        "api_key_id": call.api_key_id or "",
        "model": call.model or "",
        "upstream_session_id": call.upstream_session_id or "",
        "state": call.state,
        "end_reason": call.end_reason or "",
        "created_at": repr(call.created_at),
        "ended_at": repr(call.ended_at) if call.ended_at is not None else "",
        "leased": "1" if call.leased else "0",
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _call_from_hash(call_id: str, raw: Mapping[Any, Any]) -> Call | None:
    data = {_text(k): _text(v) for k, v in raw.items()}
    try:
        return Call(
            call_id=call_id,
            tenant_id=data["tenant_id"],
            session_id=data["session_id"],
            safety_id=data.get("safety_id", ""),
            leased=data.get("leased") == "1",
            source="attached" if data.get("source") == "attached" else "brokered",
            api_key_id=data.get("api_key_id") or None,
            model=data.get("model") or None,
            upstream_session_id=data.get("upstream_session_id") or None,
            state="ended" if data.get("state") == "ended" else "active",
            end_reason=data.get("end_reason") or None,
            created_at=float(data["created_at"]),
            ended_at=float(data["ended_at"]) if data.get("ended_at") else None,
        )
    except (KeyError, ValueError):
        return None
