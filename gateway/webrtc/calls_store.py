"""WebRTC calls and minted client secrets, findable from any replica.

Postgres (`realtime_calls`, `minted_client_secrets`, migrations 0003-0004; the statements are in
`calls_sql`) is the record; a call cache (`calls_cache`: a Redis hash per call shared by every
replica, or process memory) is read first, so the sideband monitor and the hangup route find a
call's tenant without a database round trip. A miss falls back to Postgres and refills it.

A minted secret's session row ends either with the call attached to it, or, never attached,
when `expire_unattached_secrets` sweeps it after expiry. Both lock the secret's
`minted_client_secrets` row, so a sweep and an attach never both win (docs/webrtc.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.ledger.sql import timestamp
from gateway.webrtc.calls_sql import (
    ACTIVE_CALLS,
    END_CALL,
    EXPIRED_UNATTACHED,
    GET_CALL,
    GET_MINTED,
    HAS_ATTACHABLE_SECRET,
    INSERT_CALL,
    INSERT_MINTED,
    LOCK_MINTED,
    MARK_MINTED_ATTACHED,
    MAX_SECRET_LIFETIME_S,
    REOPEN_CALL,
    REOPEN_EXPIRED_SESSION,
    SWEEP_EXPIRED_SECRETS,
)
from policies.policy import UNRESTRICTED, TenantPolicy

if TYPE_CHECKING:
    from gateway.webrtc.calls_cache import CallCache

__all__ = ["EXPIRED_UNATTACHED", "MAX_CALL_SECONDS", "Call", "CallStore", "MintedSecret"]

log = logging.getLogger("voxgate.calls")

MAX_CALL_SECONDS: Final = 3600  # a Realtime session lasts at most 60 minutes
CallSource = Literal["brokered", "attached"]
CallState = Literal["active", "ended"]


@dataclass(frozen=True, slots=True)
class Call:
    """A WebRTC call voxgate brokered or had attached: what the sideband monitor receives.

    `session_id` is voxgate's `realtime_sessions.id` the call's usage is metered into;
    `leased` is True when admission took a concurrency lease for `session_id` that the
    monitor now owns (it must release it when the call ends). `policy` and `safety_id`
    are only known on the replica that admitted or attached the call; a `Call` loaded
    from storage carries `UNRESTRICTED` and the stored safety id, and the monitor
    re-reads the tenant's policy.
    """

    call_id: str
    tenant_id: str
    session_id: str
    created_at: float  # when voxgate recorded it (the clock's wall time)
    policy: TenantPolicy = UNRESTRICTED
    safety_id: str = ""
    leased: bool = False
    source: CallSource = "brokered"
    api_key_id: str | None = None  # the tenant key that brokered or attached it; None for a browser JWT
    model: str | None = None
    upstream_session_id: str | None = None
    state: CallState = "active"
    end_reason: str | None = None
    ended_at: float | None = None

    def public(self) -> dict[str, Any]:
        """The call as `GET /v1/realtime/calls/{call_id}` shows it (no policy, no hashes)."""
        return {
            "object": "voxgate.realtime.call",
            "id": self.call_id,
            "session_id": self.session_id,
            "upstream_session_id": self.upstream_session_id,
            "source": self.source,
            "model": self.model,
            "state": self.state,
            "end_reason": self.end_reason,
            "created_at": int(self.created_at),
            "ended_at": int(self.ended_at) if self.ended_at is not None else None,
        }


@dataclass(frozen=True, slots=True)
class MintedSecret:
    upstream_session_id: str
    tenant_id: str
    session_id: str
    end_user_hash: str | None


def _call_from_row(row: asyncpg.Record) -> Call:
    ended = row["ended_at"]
    return Call(
        call_id=row["call_id"],
        tenant_id=row["tenant_id"],
        session_id=row["session_id"],
        safety_id=row["end_user_hash"] or "",
        source=row["source"],
        api_key_id=row["api_key_id"],
        model=row["model"],
        upstream_session_id=row["upstream_session_id"],
        state=row["state"],
        end_reason=row["end_reason"],
        created_at=row["created_at"].timestamp(),
        ended_at=ended.timestamp() if ended is not None else None,
    )


class CallStore:
    """Calls and minted secrets in Postgres, with a cache (`gateway.webrtc.calls_cache`) in front."""

    def __init__(self, pool: asyncpg.Pool, cache: CallCache, clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._cache = cache
        self._clock = clock  # "now" when a caller does not say

    # -- calls ----------------------------------------------------------------------------

    async def record(self, call: Call) -> bool:
        """Record a new call; False if the call id is already recorded (nothing changes)."""
        inserted = await self._pool.fetchval(INSERT_CALL, *_insert_args(call))
        if inserted is None:
            return False
        await self._cache.put(call)
        return True

    async def record_attached(self, call: Call) -> bool:
        """Record a call attached with a minted secret (`call.upstream_session_id`) and mark the
        secret attached, in one transaction; False if the call id is already recorded.

        If a sweep ended the secret's session as expired first, the session is open again:
        the call now owns it, and the call's end ends it.
        """
        assert call.upstream_session_id is not None
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(INSERT_CALL, *_insert_args(call))
            if inserted is None:
                return False
            swept_at = await conn.fetchval(LOCK_MINTED, call.upstream_session_id)
            await conn.execute(MARK_MINTED_ATTACHED, call.upstream_session_id, call.call_id, timestamp(call.created_at))
            if swept_at is not None:
                await conn.execute(REOPEN_EXPIRED_SESSION, call.session_id)
                log.info(
                    "call %s attached after its secret's session was swept; the session is open again", call.call_id
                )
        await self._cache.put(call)
        return True

    async def get(self, call_id: str) -> Call | None:
        """The call, from Redis if cached, else from Postgres (refilling the cache)."""
        cached = await self._cache.get(call_id)
        if cached is not None:
            return cached
        row = await self._pool.fetchrow(GET_CALL, call_id)
        if row is None:
            return None
        call = _call_from_row(row)
        await self._cache.put(call)
        return call

    async def get_for_tenant(self, call_id: str, tenant_id: str) -> Call | None:
        """The call if it belongs to `tenant_id`; another tenant's call is indistinguishable from none."""
        call = await self.get(call_id)
        return call if call is not None and call.tenant_id == tenant_id else None

    async def end(self, call_id: str, reason: str, now: float | None = None) -> bool:
        """Mark an active call ended; False if it was not active (already ended or unknown)."""
        now = self._clock.time() if now is None else now
        ended = await self._pool.fetchval(END_CALL, call_id, reason, timestamp(now))
        await self._cache.drop(call_id)  # Postgres decides who ended it first; the cache follows
        return ended is not None

    async def reopen(self, call_id: str, reason: str) -> bool:
        """Undo `end(call_id, reason)` (an upstream hangup that did not happen); False if it was not that end."""
        reopened = await self._pool.fetchval(REOPEN_CALL, call_id, reason)
        await self._cache.drop(call_id)
        return reopened is not None

    async def active(self, limit: int = 10_000) -> list[Call]:
        """Calls not yet ended, oldest first: what the sideband monitors must cover between them."""
        return [_call_from_row(row) for row in await self._pool.fetch(ACTIVE_CALLS, limit)]

    # -- minted client secrets ------------------------------------------------------------

    async def record_minted(self, secret: MintedSecret, expires_at: float | None) -> None:
        """Record a secret voxgate minted, so attach can find it and a sweep can end it after `expires_at`."""
        await self._pool.execute(
            INSERT_MINTED,
            secret.upstream_session_id,
            secret.tenant_id,
            secret.session_id,
            secret.end_user_hash,
            timestamp(expires_at) if expires_at is not None else None,
        )

    async def has_attachable_secret(self, tenant_id: str, now: float | None = None) -> bool:
        """True when `tenant_id` holds a minted secret not yet attached whose call could still be live."""
        now = self._clock.time() if now is None else now
        return bool(await self._pool.fetchval(HAS_ATTACHABLE_SECRET, tenant_id, timestamp(now - MAX_CALL_SECONDS)))

    async def minted(self, upstream_session_id: str) -> MintedSecret | None:
        row = await self._pool.fetchrow(GET_MINTED, upstream_session_id)
        if row is None:
            return None
        return MintedSecret(row["upstream_session_id"], row["tenant_id"], row["session_id"], row["end_user_hash"])

    async def expire_unattached_secrets(self, now: float, grace_s: float, detail: str, batch: int = 500) -> list[str]:
        """End the session rows of secrets that expired more than `grace_s` ago unattached.

        Each row ends once (`end_reason = 'client_secret_expired'`, `ended_at` = the secret's
        expiry) however many replicas sweep at once. Works in batches (one transaction each)
        until none is due. Returns the session ids this call ended.
        """
        cutoff = now - grace_s
        ended: list[str] = []
        while True:
            row = await self._pool.fetchrow(
                SWEEP_EXPIRED_SECRETS,
                timestamp(now),
                timestamp(cutoff),
                timestamp(cutoff - MAX_SECRET_LIFETIME_S),
                batch,
                detail,
            )
            assert row is not None
            ended.extend(row["ended"])
            if row["swept"] < batch:
                return ended


def _insert_args(call: Call) -> tuple[object, ...]:
    """`INSERT_CALL`'s parameters, in its column order."""
    return (
        call.call_id,
        call.tenant_id,
        call.session_id,
        call.upstream_session_id,
        call.source,
        call.model,
        call.safety_id or None,
        timestamp(call.created_at),
        call.api_key_id,
    )
