"""Delivering routed inbound calls to tenants: a durable outbox in `live_sip_calls`, retried.

Each replica runs one `SipDelivery`. It works like the budget alert sender
(gateway/alerts/sender.py) and reuses its signing and retry schedule: a pass claims the due
rows (`FOR UPDATE SKIP LOCKED` plus a lease, so two replicas never attempt one at once), posts
each event to the tenant's SIP webhook signed with the tenant's own secret (Standard Webhooks;
the `webhook-id` is the row's `delivery_id`, the same on every attempt), and records the
outcome. A 2xx delivers; anything else is retried after `RETRY_DELAYS_S`; a tenant with no
webhook configured gets none (the row says so). An attempt's outcome is recorded only while
its claim holds: an attempt that outlived its lease does not overwrite the next one's.

Housekeeping, every `HOUSEKEEPING_EVERY_S`: a call still `pending` after `PENDING_TIMEOUT_S`
(upstream stops ringing an unanswered call well before that) is `ended` and no longer
delivered; verified webhook ids older than `WEBHOOK_ID_RETENTION_S` are deleted (a replay that
old fails the signature's timestamp check anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import asyncpg
import httpx
import orjson

from gateway import __version__
from gateway.alerts.sender import BATCH, LEASE_MARGIN_S, retry_at
from gateway.alerts.signing import sign
from gateway.alerts.sql import claim_due
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings import AlertSettings
from gateway.sip.config import SipConfig

log = logging.getLogger("voxgate.sip")

PENDING_TIMEOUT_S: Final = 120.0  # how long an inbound call may ring unanswered before it is ended here
WEBHOOK_ID_RETENTION_S: Final = 7 * 86400  # replays older than this fail the timestamp check anyway
HOUSEKEEPING_EVERY_S: Final = 30.0

CLAIM_DUE: Final = claim_due(
    "live_sip_calls",
    "live_session_id",
    "o.live_session_id, o.tenant_id, o.delivery_id, o.event::text AS event, o.attempts, o.claimed_until",
)
RECORD_ATTEMPT: Final = """
UPDATE live_sip_calls
SET last_status = $2, last_attempt_at = to_timestamp($5), claimed_until = NULL,
    delivered_at = CASE WHEN $3 THEN to_timestamp($5) END,
    given_up_at = CASE WHEN NOT $3 AND $4::float8 IS NULL THEN to_timestamp($5) END,
    next_attempt_at = COALESCE(to_timestamp($4::float8), next_attempt_at)
WHERE live_session_id = $1 AND claimed_until = $6  -- still this attempt's claim: a lapsed one is another's now
"""
# A call nobody accepted within the ringing timeout is over upstream: ended, and no longer delivered.
EXPIRE_PENDING: Final = """
UPDATE live_sip_calls
SET state = 'ended', state_changed_at = now(),
    given_up_at = CASE WHEN delivered_at IS NULL THEN now() ELSE given_up_at END,
    last_status = CASE WHEN delivered_at IS NULL THEN 'expired' ELSE last_status END
WHERE state = 'pending' AND state_changed_at < now() - make_interval(secs => $1)
"""
PRUNE_WEBHOOK_IDS: Final = "DELETE FROM openai_webhook_events WHERE received_at < now() - make_interval(secs => $1)"


class SipDelivery:
    """Delivers routed inbound calls to each tenant's SIP webhook (timeouts and poll as budget alerts')."""

    def __init__(self, pool: asyncpg.Pool, settings: AlertSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._config = SipConfig(pool)
        self._settings = settings
        self._clock = clock
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_seconds, headers={"user-agent": f"voxgate/{__version__}"}
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voxgate-sip-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def housekeep(self) -> tuple[int, int]:
        """End calls ringing past `PENDING_TIMEOUT_S`; forget webhook ids past their retention."""
        expired = await self._pool.execute(EXPIRE_PENDING, PENDING_TIMEOUT_S)
        pruned = await self._pool.execute(PRUNE_WEBHOOK_IDS, float(WEBHOOK_ID_RETENTION_S))
        return int(expired.split()[-1]), int(pruned.split()[-1])

    async def _run(self) -> None:
        failing = False
        next_housekeeping = 0.0
        while True:
            sent = 0
            try:
                if self._clock.monotonic() >= next_housekeeping:
                    next_housekeeping = self._clock.monotonic() + HOUSEKEEPING_EVERY_S
                    await self.housekeep()
                sent = await self.deliver_due()
                failing = False
            except Exception as exc:  # Postgres away: the outbox keeps everything
                if not failing:
                    log.warning("SIP deliveries: cannot read the outbox (%s); retrying", type(exc).__name__)
                failing = True
            if sent < BATCH:
                await self._clock.sleep(min(self._settings.poll_seconds, 0.5))

    async def deliver_due(self) -> int:
        """One pass: claim what is due and attempt each once. Returns how many were attempted."""
        now = self._clock.time()
        due = await self._pool.fetch(CLAIM_DUE, now, BATCH, now + self._settings.timeout_seconds + LEASE_MARGIN_S)
        await asyncio.gather(*(self._attempt(dict(row)) for row in due))
        return len(due)

    async def _attempt(self, row: dict[str, object]) -> None:
        tenant_id, delivery_id = str(row["tenant_id"]), str(row["delivery_id"])
        webhook = await self._config.webhook(tenant_id)
        if webhook is None:
            await self._record(row, "no webhook configured", False, None)
            return
        body = orjson.dumps(orjson.loads(str(row["event"])))
        stamp = int(self._clock.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(webhook.secret, delivery_id, stamp, body),
        }
        try:
            response = await self._client.post(webhook.url, content=body, headers=headers)
            status, delivered = str(response.status_code), 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            status, delivered = type(exc).__name__, False
        attempts = int(str(row["attempts"]))
        again = None if delivered else retry_at(attempts, self._clock.time())
        if not delivered:
            log.warning(
                "SIP delivery %s for tenant %s: attempt %d failed (%s)", delivery_id, tenant_id, attempts, status
            )
        await self._record(row, status, delivered, again)

    async def _record(self, row: dict[str, object], status: str, delivered: bool, again: float | None) -> None:
        await self._pool.execute(
            RECORD_ATTEMPT, row["live_session_id"], status, delivered, again, self._clock.time(), row["claimed_until"]
        )
