"""Small conversions shared by the live-state modules."""

from __future__ import annotations

import math


def text(value: object) -> str:
    """Redis replies are bytes unless the client decodes; the live state works with both."""
    return value.decode() if isinstance(value, bytes) else str(value)


def key_ttl(ttl_s: float) -> int:
    """A safety-net TTL for a key holding entries that expire after `ttl_s` (timing uses `now`)."""
    return math.ceil(ttl_s) * 2 + 60
