"""How often a tenant may try to attach calls: each attempt may cost an upstream sideband handshake."""

from __future__ import annotations

from typing import Final

from gateway.errors import GatewayError
from policies.ratelimit import TokenBucket, take

# Attach attempts per tenant and process.
ATTACH_BURST: Final = 10
ATTACH_PER_SECOND: Final = 0.5
MAX_ATTACH_BUCKETS: Final = 10_000


class AttachLimiter:
    """Per-tenant token buckets for attach attempts, in this process, bounded in size."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, tenant_id: str, now: float) -> None:
        """Count one attempt against the tenant's bucket (`now` monotonic); a 429 when it is empty."""
        bucket = self._buckets.get(tenant_id) or TokenBucket.full(ATTACH_BURST, ATTACH_PER_SECOND, now)
        allowed, after, retry_after = take(bucket, now)
        if len(self._buckets) >= MAX_ATTACH_BUCKETS and tenant_id not in self._buckets:
            self._buckets.clear()  # bounded: a full bucket is what a forgotten tenant starts with again
        self._buckets[tenant_id] = after
        if not allowed:
            raise GatewayError(
                429,
                f"Too many attach attempts; at most {ATTACH_BURST} at once and "
                f"{ATTACH_PER_SECOND:g} per second per tenant.",
                code="rate_limit_exceeded",
                retry_after=retry_after,
            )
