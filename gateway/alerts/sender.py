"""Delivering the outbox: one signed POST per attempt, retried with backoff, never sent twice at once.

Each replica runs one `AlertSender`. A pass claims the due alerts (`FOR UPDATE SKIP LOCKED`
plus a lease, so two replicas never attempt the same alert at once), posts each to the
tenant's webhook or the global one, and records the outcome. A 2xx delivers; anything else
(another status, a timeout, a refused connection) is retried after `RETRY_DELAYS_S`, with the
same `webhook-id`, so a receiver that got an attempt whose answer was lost can drop the
repeat. After the last delay the alert is given up (its log row says so).

With an `AlertSweep` (gateway/alerts/recovery.py), the sender also compares the ledger with the
thresholds at start and every `sweep_seconds` (VOXGATE_ALERT_SWEEP_SECONDS; 0: never), before
delivering, so a crossing whose audit row a killed process never wrote is recorded and then sent
like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import httpx
import orjson

from gateway import __version__
from gateway.alerts.outbox import AlertOutbox, DueAlert, Webhook
from gateway.alerts.recovery import AlertSweep
from gateway.alerts.signing import sign
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.settings import AlertSettings

log = logging.getLogger("voxgate.alerts")

# Seconds after the 1st, 2nd, … failed attempt (the Standard Webhooks retry schedule, ~41 h).
RETRY_DELAYS_S: Final = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
BATCH: Final = 20  # alerts claimed per pass
LEASE_MARGIN_S: Final = 20.0  # an attempt's lease outlives its timeout by this much


def retry_at(attempts: int, now: float) -> float | None:
    """When to try again after the `attempts`-th failure; None when the schedule is spent."""
    return now + RETRY_DELAYS_S[attempts - 1] if attempts <= len(RETRY_DELAYS_S) else None


class AlertSender:
    """The background task that delivers due alerts from the outbox."""

    def __init__(
        self,
        outbox: AlertOutbox,
        settings: AlertSettings,
        clock: Clock = SYSTEM_CLOCK,
        client: httpx.AsyncClient | None = None,
        sweep: AlertSweep | None = None,
    ) -> None:
        self._outbox = outbox
        self._sweep = sweep
        self._next_sweep = float("-inf")  # the first pass sweeps
        self._sweep_failing = False
        self._settings = settings
        self._clock = clock
        self._client = client or httpx.AsyncClient(
            timeout=settings.timeout_seconds, follow_redirects=False, headers={"user-agent": f"voxgate/{__version__}"}
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voxgate-alert-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _run(self) -> None:
        failing = False
        while True:
            sent = 0
            try:
                await self._sweep_when_due()
                sent = await self.deliver_due()
                failing = False
            except Exception as exc:  # Postgres away: try again next poll; the outbox keeps everything
                if not failing:  # once per outage, not once per poll
                    log.warning("budget alerts: cannot read the outbox (%s); retrying", type(exc).__name__)
                failing = True
            if sent < BATCH:
                await self._clock.sleep(self._settings.poll_seconds)

    async def _sweep_when_due(self) -> None:
        """Run the ledger sweep when it is due; a failed one is retried on the next pass, logged once."""
        if self._sweep is None or self._settings.sweep_seconds <= 0 or self._clock.monotonic() < self._next_sweep:
            return
        try:
            await self._sweep.run()
        except Exception as exc:  # Postgres away: the ledger keeps the spend, the next pass sweeps again
            if not self._sweep_failing:
                log.warning("budget alerts: cannot sweep the ledger (%s); retrying", type(exc).__name__)
            self._sweep_failing = True
            return
        self._sweep_failing = False
        self._next_sweep = self._clock.monotonic() + self._settings.sweep_seconds

    async def deliver_due(self) -> int:
        """One pass: claim what is due and attempt each once. Returns how many were attempted."""
        now = self._clock.time()
        due = await self._outbox.claim_due(now, BATCH, self._settings.timeout_seconds + LEASE_MARGIN_S)
        await asyncio.gather(*(self._attempt(alert) for alert in due))
        return len(due)

    async def _destination(self, tenant_id: str) -> Webhook | None:
        own = await self._outbox.tenant_webhook(tenant_id)
        if own is not None:
            return own
        url, secret = self._settings.webhook_url, self._settings.webhook_secret
        return Webhook(url, secret) if url and secret else None

    async def _attempt(self, alert: DueAlert) -> None:
        webhook = await self._destination(alert.tenant_id)
        if webhook is None:  # nowhere to send it: the log keeps it, nothing retries it
            await self._outbox.record_attempt(alert.id, "no webhook configured", False, None, self._clock.time())
            return
        body = orjson.dumps(alert.event())
        timestamp = int(self._clock.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": alert.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(webhook.secret, alert.id, timestamp, body),
        }
        try:
            response = await self._client.post(webhook.url, content=body, headers=headers)
            status, delivered = str(response.status_code), 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            status, delivered = type(exc).__name__, False
        now = self._clock.time()
        again = None if delivered else retry_at(alert.attempts, now)
        if not delivered:
            log.warning(
                "budget alert %s for tenant %s: attempt %d failed (%s)%s",
                alert.id,
                alert.tenant_id,
                alert.attempts,
                status,
                "" if again is not None else "; giving up",
            )
        await self._outbox.record_attempt(alert.id, status, delivered, again, now)
