"""Public identifiers: a short type prefix plus 80 random bits, e.g. ``ten_3k7q2m9x4b1c5d8e``.

Ids are safe to show and log (unlike API key secrets). The prefix says what a thing is at a
glance in logs and support tickets; lower-case base32 keeps ids URL- and shell-safe.
"""

from __future__ import annotations

import base64
import re
import secrets

TENANT_PREFIX = "ten"
API_KEY_PREFIX = "key"
SESSION_PREFIX = "vgs"

_PREFIX = re.compile(r"[a-z]{2,8}")


def new_id(prefix: str) -> str:
    """Return ``f"{prefix}_"`` followed by 16 lower-case base32 characters (80 random bits).

    ``prefix`` is the bare type tag (``"ten"``, ``"key"``, ``"vgs"``), without the underscore.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"id prefix must be 2-8 lower-case letters, got {prefix!r}")
    # 10 bytes encode to exactly 16 base32 characters, so there is no padding to strip.
    return f"{prefix}_{base64.b32encode(secrets.token_bytes(10)).decode('ascii').lower()}"
