"""Call monitor claims: which replica watches a WebRTC call's sideband (gateway.webrtc.sideband).

One claim per call, a hash `<prefix>{<tenant>}:monitor:<call_id>` holding the owner (the
replica's instance id) and its expiry (`now + ttl_s`). The owner renews it while it watches; a
replica that dies stops renewing, and once the expiry passes another replica's scan takes the
call over. Timing uses the callers' `now`; the key's Redis TTL is only a safety net.
"""

from __future__ import annotations

from gateway.livestate import scripts
from gateway.livestate._util import key_ttl
from gateway.livestate.keys import KeyLayout
from gateway.livestate.scripts import ScriptRunner


class MonitorClaims:
    def __init__(self, runner: ScriptRunner, keys: KeyLayout, owner: str) -> None:
        self._run = runner
        self._keys = keys
        self._owner = owner

    async def claim(self, tenant_id: str, call_id: str, ttl_s: float, now: float, take: bool) -> bool:
        """Renew our live claim, or (with `take`) take a lapsed or absent one; True if we hold it."""
        key = self._keys.tenant(tenant_id).monitor(call_id)
        args: list[scripts.Arg] = [self._owner, now, now + ttl_s, key_ttl(ttl_s), 1 if take else 0]
        return bool(await self._run.run(scripts.MONITOR_CLAIM, [key], args))

    async def release(self, tenant_id: str, call_id: str) -> bool:
        """Drop our claim; False if we did not hold it."""
        key = self._keys.tenant(tenant_id).monitor(call_id)
        return bool(await self._run.run(scripts.MONITOR_RELEASE, [key], [self._owner]))

    async def taken(self, tenant_id: str, call_id: str, now: float) -> bool:
        """Another replica holds a live claim on the call."""
        key = self._keys.tenant(tenant_id).monitor(call_id)
        return bool(await self._run.run(scripts.MONITOR_TAKEN, [key], [self._owner, now]))
