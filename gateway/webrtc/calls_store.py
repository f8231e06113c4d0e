"""WebRTC calls and minted client secrets, findable from any replica.

Postgres (`realtime_calls`, `minted_client_secrets`, migrations 0003-0004) is the record; a
Redis hash per call (`<prefix>call:<call_id>`) is a cache every replica reads first, so the
sideband monitor and the hangup route find a call's tenant without a database round trip.
A Redis miss (expired, flushed, or Redis down) falls back to Postgres and refills the hash.

A minted secret's session row ends either with the call attached to it, or, never attached,
when `expire_unattached_secrets` sweeps it after expiry. Both lock the secret's
`minted_client_secrets` row, so a sweep and an attach never both win (docs/webrtc.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from policies.policy import UNRESTRICTED, TenantPolicy

log = logging.getLogger("voxgate.calls")

CALL_CACHE_TTL_S: Final = 24 * 3600
EXPIRED_UNATTACHED: Final = "client_secret_expired"  # realtime_sessions.end_reason of a secret never attached
MAX_SECRET_LIFETIME_S: Final = 7200  # upstream's longest `expires_after`: the expiry of a secret stored without one
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
    policy: TenantPolicy = UNRESTRICTED
    safety_id: str = ""
    leased: bool = False
    source: CallSource = "brokered"
    api_key_id: str | None = None  # the tenant key that brokered or attached it; None for a browser JWT
    model: str | None = None
    upstream_session_id: str | None = None
    state: CallState = "active"
    end_reason: str | None = None
    created_at: float = field(default_factory=time.time)
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


INSERT_CALL: Final = """
INSERT INTO realtime_calls (call_id, tenant_id, session_id, upstream_session_id, source, model, end_user_hash,
                            state, created_at, api_key_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9)
ON CONFLICT (call_id) DO NOTHING
RETURNING call_id
"""

_CALL_COLUMNS: Final = """call_id, tenant_id, session_id, api_key_id, upstream_session_id, source, model, end_user_hash,
       state, end_reason, created_at, ended_at"""

GET_CALL: Final = f"SELECT {_CALL_COLUMNS} FROM realtime_calls WHERE call_id = $1"

ACTIVE_CALLS: Final = f"SELECT {_CALL_COLUMNS} FROM realtime_calls WHERE state = 'active' ORDER BY created_at LIMIT $1"

REOPEN_CALL: Final = """
UPDATE realtime_calls SET state = 'active', end_reason = NULL, ended_at = NULL
WHERE call_id = $1 AND state = 'ended' AND end_reason = $2
RETURNING call_id
"""


END_CALL: Final = """
UPDATE realtime_calls SET state = 'ended', end_reason = $2, ended_at = $3
WHERE call_id = $1 AND state = 'active'
RETURNING call_id
"""

INSERT_MINTED: Final = """
INSERT INTO minted_client_secrets (upstream_session_id, tenant_id, session_id, end_user_hash, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (upstream_session_id) DO NOTHING
"""

GET_MINTED: Final = """
SELECT upstream_session_id, tenant_id, session_id, end_user_hash FROM minted_client_secrets
WHERE upstream_session_id = $1
"""

# Whether a tenant holds a secret voxgate minted that no call was attached with yet and that
# may still carry a live call (one placed just before its secret expired lasts at most
# MAX_CALL_SECONDS more). Attach asks this before it opens anything upstream. $2 = now - MAX_CALL_SECONDS.
HAS_ATTACHABLE_SECRET: Final = f"""
SELECT EXISTS (
    SELECT 1 FROM minted_client_secrets
    WHERE tenant_id = $1 AND attached_at IS NULL
      AND COALESCE(expires_at, created_at + interval '{MAX_SECRET_LIFETIME_S} seconds') > $2
)
"""

# Attach takes the secret's row lock (a running sweep has it, or skips it), then un-ends a
# session a sweep ended first: the call's end will end it again, with the call's reason.
LOCK_MINTED: Final = "SELECT expired_at FROM minted_client_secrets WHERE upstream_session_id = $1 FOR UPDATE"

MARK_MINTED_ATTACHED: Final = """
UPDATE minted_client_secrets
SET call_id = COALESCE(call_id, $2), attached_at = COALESCE(attached_at, $3), expired_at = NULL
WHERE upstream_session_id = $1
"""

REOPEN_EXPIRED_SESSION: Final = f"""
UPDATE realtime_sessions SET ended_at = NULL, end_reason = NULL, end_detail = NULL
WHERE id = $1 AND end_reason = '{EXPIRED_UNATTACHED}'
"""

# Secrets past expiry + grace, never attached, whose session row the ledger has written:
# mark them swept and end their open session rows at the secret's expiry. SKIP LOCKED lets
# replicas sweep at once without waiting on each other or ending a row twice.
# $1 now, $2 expiry cutoff, $3 creation cutoff (secrets stored without an expiry), $4 batch, $5 detail.
SWEEP_EXPIRED_SECRETS: Final = f"""
WITH due AS (
    SELECT m.upstream_session_id
    FROM minted_client_secrets m
    WHERE m.attached_at IS NULL AND m.expired_at IS NULL
      AND (m.expires_at < $2 OR (m.expires_at IS NULL AND m.created_at < $3))
      AND EXISTS (SELECT 1 FROM realtime_sessions s WHERE s.id = m.session_id)
    ORDER BY m.expires_at
    LIMIT $4
    FOR UPDATE OF m SKIP LOCKED
), swept AS (
    UPDATE minted_client_secrets m SET expired_at = $1
    FROM due
    WHERE m.upstream_session_id = due.upstream_session_id
    RETURNING m.session_id, COALESCE(m.expires_at, m.created_at + interval '{MAX_SECRET_LIFETIME_S} seconds') AS expiry
), ended AS (
    UPDATE realtime_sessions s
    SET ended_at = LEAST(swept.expiry, $1), end_reason = '{EXPIRED_UNATTACHED}', end_detail = $5
    FROM swept
    WHERE s.id = swept.session_id AND s.ended_at IS NULL
    RETURNING s.id
)
SELECT (SELECT count(*) FROM swept) AS swept, ARRAY(SELECT id FROM ended) AS ended
"""


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


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


class CallStore:
    """Calls and minted secrets in Postgres, with a Redis hash per call for fast lookups."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis | None, key_prefix: str = "voxgate:") -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = key_prefix

    def cache_key(self, call_id: str) -> str:
        return f"{self._prefix}call:{call_id}"

    # -- calls ----------------------------------------------------------------------------

    async def record(self, call: Call) -> bool:
        """Record a new call; False if the call id is already recorded (nothing changes)."""
        inserted = await self._pool.fetchval(
            INSERT_CALL,
            call.call_id,
            call.tenant_id,
            call.session_id,
            call.upstream_session_id,
            call.source,
            call.model,
            call.safety_id or None,
            _ts(call.created_at),
            call.api_key_id,
        )
        if inserted is None:
            return False
        await self._cache(call)
        return True

    async def record_attached(self, call: Call) -> bool:
        """Record a call attached with a minted secret (`call.upstream_session_id`) and mark the
        secret attached, in one transaction; False if the call id is already recorded.

        If a sweep ended the secret's session as expired first, the session is open again:
        the call now owns it, and the call's end ends it.
        """
        assert call.upstream_session_id is not None
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                INSERT_CALL,
                call.call_id,
                call.tenant_id,
                call.session_id,
                call.upstream_session_id,
                call.source,
                call.model,
                call.safety_id or None,
                _ts(call.created_at),
                call.api_key_id,
            )
            if inserted is None:
                return False
            swept_at = await conn.fetchval(LOCK_MINTED, call.upstream_session_id)
            await conn.execute(MARK_MINTED_ATTACHED, call.upstream_session_id, call.call_id, _ts(call.created_at))
            if swept_at is not None:
                await conn.execute(REOPEN_EXPIRED_SESSION, call.session_id)
                log.info(
                    "call %s attached after its secret's session was swept; the session is open again", call.call_id
                )
        await self._cache(call)
        return True

    async def get(self, call_id: str) -> Call | None:
        """The call, from Redis if cached, else from Postgres (refilling the cache)."""
        if self._redis is not None:
            try:
                raw: dict[Any, Any] = await self._redis.hgetall(self.cache_key(call_id))  # type: ignore[misc,unused-ignore]
            except RedisError as exc:
                log.warning("call cache unreachable (%s); reading %s from Postgres", exc, call_id)
                raw = {}
            if raw:
                cached = _call_from_hash(call_id, raw)
                if cached is not None:
                    return cached
        row = await self._pool.fetchrow(GET_CALL, call_id)
        if row is None:
            return None
        call = _call_from_row(row)
        await self._cache(call)
        return call

    async def get_for_tenant(self, call_id: str, tenant_id: str) -> Call | None:
        """The call if it belongs to `tenant_id`; another tenant's call is indistinguishable from none."""
        call = await self.get(call_id)
        return call if call is not None and call.tenant_id == tenant_id else None

    async def end(self, call_id: str, reason: str, now: float | None = None) -> bool:
        """Mark an active call ended; False if it was not active (already ended or unknown)."""
        now = time.time() if now is None else now
        ended = await self._pool.fetchval(END_CALL, call_id, reason, _ts(now))
        if self._redis is not None:
            # Postgres decides who ended the call first; the cache only follows it.
            try:
                await self._redis.delete(self.cache_key(call_id))  # refilled from Postgres on the next read
            except RedisError as exc:  # the cached row shows the call active until its cache TTL
                log.warning("could not drop the cached row of ended call %s: %s", call_id, exc)
        return ended is not None

    async def reopen(self, call_id: str, reason: str) -> bool:
        """Undo `end(call_id, reason)` (an upstream hangup that did not happen); False if it was not that end."""
        reopened = await self._pool.fetchval(REOPEN_CALL, call_id, reason)
        if self._redis is not None:
            try:
                await self._redis.delete(self.cache_key(call_id))  # refilled from Postgres on the next read
            except RedisError as exc:  # the cached row shows the call active until its cache TTL
                log.warning("could not drop the cached row of ended call %s: %s", call_id, exc)
        return reopened is not None

    async def active(self, limit: int = 10_000) -> list[Call]:
        """Calls not yet ended, oldest first: what the sideband monitors must cover between them."""
        return [_call_from_row(row) for row in await self._pool.fetch(ACTIVE_CALLS, limit)]

    async def _cache(self, call: Call) -> None:
        if self._redis is None:
            return
        key = self.cache_key(call.call_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=_call_to_hash(call))  # type: ignore[arg-type]
                pipe.expire(key, CALL_CACHE_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not cache call %s: %s", call.call_id, exc)

    # -- minted client secrets ------------------------------------------------------------

    async def record_minted(self, secret: MintedSecret, expires_at: float | None) -> None:
        """Record a secret voxgate minted, so attach can find it and a sweep can end it after `expires_at`."""
        await self._pool.execute(
            INSERT_MINTED,
            secret.upstream_session_id,
            secret.tenant_id,
            secret.session_id,
            secret.end_user_hash,
            _ts(expires_at) if expires_at is not None else None,
        )

    async def has_attachable_secret(self, tenant_id: str, now: float | None = None) -> bool:
        """True when `tenant_id` holds a minted secret not yet attached whose call could still be live."""
        now = time.time() if now is None else now
        return bool(await self._pool.fetchval(HAS_ATTACHABLE_SECRET, tenant_id, _ts(now - MAX_CALL_SECONDS)))

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
                SWEEP_EXPIRED_SECRETS, _ts(now), _ts(cutoff), _ts(cutoff - MAX_SECRET_LIFETIME_S), batch, detail
            )
            assert row is not None
            ended.extend(row["ended"])
            if row["swept"] < batch:
                return ended
