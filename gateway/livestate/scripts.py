"""The Lua scripts, package files registered once: EVALSHA, with a NOSCRIPT fallback.

A script is its `.lua` file preceded by the preludes it names (`_common.lua` first), so shared
Lua helpers exist once. SHA1s are computed locally, so EVALSHA works even before `load()`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


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
LEASE_RELEASE = LuaScript.build("lease_release")
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

ALL_SCRIPTS = (
    LEASE_ACQUIRE, LEASE_HEARTBEAT, LEASE_RELEASE, LEASE_COUNT, TENANT_REAP, INDEX_TOUCH, INDEX_DROP,
    START_RATE, BUDGET_SPEND, BUDGET_RESERVE, BUDGET_SETTLE, BUDGET_REBUILD, HEADROOM_RECORD,
)  # fmt: skip

Arg = str | int | float
Call = tuple[LuaScript, Sequence[str], Sequence[Arg]]


class ScriptRunner:
    """Runs the package's scripts on one client; reloads a script when Redis forgot it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def load(self) -> None:
        """SCRIPT LOAD every script (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for script in ALL_SCRIPTS:
                pipe.script_load(script.source)
            await pipe.execute()

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """All calls in one pipelined round trip (not a transaction: each script is atomic)."""
        if not calls:
            return []
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:  # NOSCRIPT means the call did not run, so running it again is safe
            for script in {calls[i][0] for i in missing}:
                await self.redis.script_load(script.source)
            for i, result in zip(missing, await self._pipeline([calls[i] for i in missing]), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
