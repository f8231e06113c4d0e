"""The call cache in front of Postgres: one behaviour whether it is Redis (shared) or memory.

The calls store runs the same code over either; a cache that cannot answer is a miss, never
an error (the store then reads Postgres).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.webrtc.calls_cache import CALL_CACHE_TTL_S, CallCache, MemoryCallCache, RedisCallCache
from gateway.webrtc.calls_store import Call
from tests.support.clock import FakeClock


def a_call(**fields: object) -> Call:
    base: dict[str, object] = {
        "call_id": f"rtc_{secrets.token_hex(4)}",
        "tenant_id": "ten_a",
        "session_id": f"vgs_{secrets.token_hex(4)}",
        "safety_id": "vgu_x",
        "leased": True,
        "source": "attached",
        "api_key_id": "key_1",
        "model": "gpt-realtime",
        "upstream_session_id": "sess_1",
        "created_at": 1_700_000_000.25,
    }
    return Call(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest, redis_client: aioredis.Redis, redis_prefix: str) -> CallCache:
    if request.param == "memory":
        return MemoryCallCache()
    return RedisCallCache(redis_client, redis_prefix)


async def test_a_cached_call_reads_back_whole(cache: CallCache) -> None:
    call = a_call()
    assert await cache.get(call.call_id) is None
    await cache.put(call)
    assert await cache.get(call.call_id) == call
    ended = a_call(call_id=call.call_id, state="ended", end_reason="hangup", ended_at=1_700_000_100.5, leased=False)
    await cache.put(ended)
    assert await cache.get(call.call_id) == ended


async def test_a_dropped_call_is_a_miss(cache: CallCache) -> None:
    call = a_call(api_key_id=None, model=None, upstream_session_id=None, source="brokered")
    await cache.put(call)
    await cache.drop(call.call_id)
    assert await cache.get(call.call_id) is None
    await cache.drop(call.call_id)  # dropping twice is harmless


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    yield client
    await client.aclose()


async def test_an_unreachable_redis_is_a_miss_not_an_error(dead_redis: aioredis.Redis) -> None:
    cache = RedisCallCache(dead_redis)
    call = a_call()
    await cache.put(call)
    assert await cache.get(call.call_id) is None
    await cache.drop(call.call_id)


async def test_the_memory_cache_forgets_after_the_ttl_and_past_its_capacity() -> None:
    clock = FakeClock()
    cache = MemoryCallCache(clock, capacity=2)
    first, second, third = a_call(), a_call(), a_call()
    await cache.put(first)
    await cache.put(second)
    assert await cache.get(first.call_id) == first  # now the most recently used
    await cache.put(third)
    assert await cache.get(second.call_id) is None  # the least recently used went
    assert await cache.get(first.call_id) == first
    await clock.advance(CALL_CACHE_TTL_S)
    assert await cache.get(first.call_id) is None
    assert await cache.get(third.call_id) is None
