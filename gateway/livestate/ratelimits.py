"""Session start rate per tenant (sliding minute) and the org-wide upstream headroom."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from gateway.livestate import scripts
from gateway.livestate._util import text
from gateway.livestate.keys import KeyLayout
from gateway.livestate.scripts import ScriptRunner

START_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class StartResult:
    """`retry_after_s` is 0 when allowed, else the seconds until a start slot frees up."""

    allowed: bool
    retry_after_s: float


class StartRate:
    """At most `per_minute` starts in any 60 s window (a sliding log, exact rather than bucketed)."""

    def __init__(self, runner: ScriptRunner, keys: KeyLayout, instance_id: str) -> None:
        self._run = runner
        self._keys = keys
        self._member_prefix = f"{instance_id}:"

    async def take(self, tenant_id: str, per_minute: int, now: float) -> StartResult:
        if per_minute <= 0:
            return StartResult(False, START_WINDOW_S)
        member = self._member_prefix + secrets.token_hex(8)
        allowed, wait = await self._run.run(
            scripts.START_RATE, [self._keys.tenant(tenant_id).starts], [now, START_WINDOW_S, per_minute, member]
        )
        return StartResult(bool(allowed), float(text(wait)))


@dataclass(frozen=True, slots=True)
class Headroom:
    """The latest upstream `rate_limits.updated` tokens entry any replica saw."""

    tokens_limit: int
    tokens_remaining: int
    reset_seconds: float
    observed_at: float

    @property
    def resets_at(self) -> float:
        return self.observed_at + self.reset_seconds

    @property
    def remaining_fraction(self) -> float:
        return self.tokens_remaining / self.tokens_limit if self.tokens_limit > 0 else 0.0

    def retry_after_s(self, now: float) -> float:
        """Seconds until upstream's window resets (what a 429 `retry-after` should say)."""
        return max(0.0, self.resets_at - now)


class UpstreamHeadroom:
    def __init__(self, runner: ScriptRunner, keys: KeyLayout) -> None:
        self._run = runner
        self._key = keys.headroom

    async def record(self, tokens_limit: int, tokens_remaining: int, reset_seconds: float, now: float) -> None:
        ttl = math.ceil(max(reset_seconds, 0.0)) + 60
        await self._run.run(
            scripts.HEADROOM_RECORD, [self._key], [tokens_limit, tokens_remaining, float(reset_seconds), now, ttl]
        )

    @property
    def read_command(self) -> tuple[str, str]:
        """The command whose reply `parse` reads (to pipeline it with other calls)."""
        return "HGETALL", self._key

    async def read(self, now: float) -> Headroom | None:
        """None if nothing was recorded or the snapshot is older than its own reset time."""
        return self.parse(await self._run.redis.hgetall(self._key), now)

    @staticmethod
    def parse(reply: dict[Any, Any] | list[Any], now: float) -> Headroom | None:
        if isinstance(reply, list):  # HGETALL through a pipeline's generic command: flat pairs
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        raw = {text(k): text(v) for k, v in reply.items()}
        try:
            h = Headroom(
                int(raw["limit"]), int(raw["remaining"]), float(raw["reset_seconds"]), float(raw["observed_at"])
            )
        except (KeyError, ValueError):
            return None
        return None if now >= h.resets_at else h
