"""Exhaustion and policy broadcasts across replicas (Redis pub/sub, at-most-once).

Messages published while a subscriber is disconnected are lost; after every reconnect the
subscriber yields a `Broadcast("resync", "", {}, <own instance>)` so the caller can re-check what
it may have missed (budgets, policies) instead of trusting a silent gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.livestate._util import text
from gateway.pools import RedisClient

log = logging.getLogger(__name__)

RESYNC = "resync"


@dataclass(frozen=True, slots=True)
class Broadcast:
    kind: str  # e.g. "budget_exhausted", "policy_changed", or RESYNC after a reconnect
    tenant_id: str
    detail: dict[str, Any] = field(default_factory=dict)
    origin_instance: str = ""


class Bus:
    def __init__(
        self,
        redis: RedisClient,
        channel: str,
        instance_id: str,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        clock: Clock = SYSTEM_CLOCK,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._instance_id = instance_id
        self._backoff = backoff_s
        self._clock = clock  # the reconnect backoff waits on it
        self._jitter = jitter  # in [0, 1): each wait is between half and all of the backoff

    async def publish(self, kind: str, tenant_id: str, detail: dict[str, Any] | None = None) -> int:
        """Send to every subscribed replica (this one included); returns how many received it."""
        payload = {"kind": kind, "tenant_id": tenant_id, "detail": detail or {}, "origin": self._instance_id}
        return int(await self._redis.publish(self._channel, json.dumps(payload, separators=(",", ":"))))

    async def subscribe(self, ready: asyncio.Event | None = None) -> AsyncIterator[Broadcast]:
        """Yield broadcasts forever; reconnects with capped exponential backoff; cancellable.

        `ready` is set each time the subscription is (re)established.
        """
        delay, attempt = self._backoff[0], 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while (await pubsub.get_message(timeout=None) or {}).get("type") != "subscribe":
                    pass  # confirmed: from here on, nothing published is missed
                if ready is not None:
                    ready.set()
                if attempt:
                    yield Broadcast(RESYNC, "", {}, self._instance_id)
                delay, attempt = self._backoff[0], attempt + 1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    event = _decode(message["data"])
                    if event is not None:
                        yield event
            except (RedisError, OSError) as exc:
                log.warning("live-state subscription lost (%s); retrying in %.1fs", type(exc).__name__, delay)
                if ready is not None:
                    ready.clear()
                attempt = max(attempt, 1)
            finally:
                await pubsub.aclose()
            await self._clock.sleep(delay * (0.5 + self._jitter() / 2))
            delay = min(delay * 2, self._backoff[1])


def _decode(data: object) -> Broadcast | None:
    try:
        raw = json.loads(text(data))
        detail = raw.get("detail") or {}
        return Broadcast(str(raw["kind"]), str(raw["tenant_id"]), dict(detail), str(raw.get("origin", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring a malformed live-state broadcast")
        return None
