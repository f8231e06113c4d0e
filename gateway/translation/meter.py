"""What a translation session costs: its appended audio, cross-checked with upstream's `elapsed_ms`.

No translation event carries usage, and the model is billed "by audio duration", so voxgate
counts the PCM16 24 kHz mono audio the client appends (48 bytes a millisecond, base64
decoded). Upstream's `session.output_audio.delta.elapsed_ms` is its model time, advancing in
200 ms frames over the same audio: it runs at most one frame ahead of what was appended. If
it runs further ahead (audio voxgate did not see), the booking follows upstream's figure
less one frame and is marked estimated, so a miscount can only ever raise the bill to what
upstream says. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

from gateway.ledger.records import DurationRecord
from policies.prices.table import PriceTable
from policies.pricing import div_round_half_up, duration_cost_micro_usd

BYTES_PER_MS: Final = 48  # PCM16 (2 bytes) at 24,000 samples a second, mono
FRAME_MS: Final = 200  # upstream's model time advances in 200 ms frames
TRANSLATION: Final = "translation"  # duration_usage.kind
APPEND: Final = "session.input_audio_buffer.append"


def decoded_length(audio: object) -> int:
    """Bytes of base64 `audio`; 0 when it is not base64 (upstream refuses such an append)."""
    if not isinstance(audio, str):
        return 0
    try:
        return len(base64.b64decode(audio, validate=True))
    except (binascii.Error, ValueError):
        return 0


@dataclass(slots=True)
class TranslationMeter:
    """One translation session's audio: fed the client's appends and upstream's audio deltas."""

    session_id: str
    tenant_id: str
    model: str
    appended_bytes: int = 0
    elapsed_ms: int = 0
    upstream_session_id: str | None = None

    def on_client(self, event: dict[str, Any]) -> None:
        if event.get("type") == APPEND:
            self.appended_bytes += decoded_length(event.get("audio"))

    def on_upstream(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.output_audio.delta":
            elapsed = event.get("elapsed_ms")
            if isinstance(elapsed, int) and not isinstance(elapsed, bool) and elapsed > self.elapsed_ms:
                self.elapsed_ms = elapsed
        elif kind == "session.created" and self.upstream_session_id is None:
            session = event.get("session")
            upstream_id = session.get("id") if isinstance(session, dict) else None
            self.upstream_session_id = upstream_id if isinstance(upstream_id, str) else None

    @property
    def appended_ms(self) -> int:
        return div_round_half_up(self.appended_bytes, BYTES_PER_MS)

    def book(self, prices: PriceTable, now: float) -> DurationRecord | None:
        """The session's one ledger row (None when no audio was appended or reported)."""
        billed = self.appended_ms
        upstream_ahead = self.elapsed_ms - FRAME_MS
        estimated = upstream_ahead > billed
        billed = max(billed, upstream_ahead)
        if billed <= 0:
            return None
        price, key = prices.duration_price_for(self.model)
        return DurationRecord(
            session_id=self.session_id,
            kind=TRANSLATION,
            usage_id=self.upstream_session_id or self.session_id,
            tenant_id=self.tenant_id,
            model=self.model,
            occurred_at=now,
            active_ms=billed,
            standby_ms=0,
            estimated=estimated,
            cost_micro_usd=duration_cost_micro_usd(price, active_ms=billed),
            price_version=prices.version_for(key),
        )
