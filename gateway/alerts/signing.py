"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

The secret is `whsec_` followed by the base64 of the key bytes; the signed content is the
message id, the unix-seconds timestamp and the exact body bytes, joined with dots.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format's prefix, not a secret
MIN_KEY_BYTES: Final = 24  # the spec's secrets are 24 to 64 random bytes
MAX_KEY_BYTES: Final = 64


class WebhookSecretError(ValueError):
    """A secret that is not `whsec_` + base64 of 24 to 64 bytes (the message never holds it)."""


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_…` secret encodes."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretError("must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError("must be 'whsec_' followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise WebhookSecretError(f"must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
    return key


def secret_setting(name: str, value: str | None) -> str | None:
    """An optional `whsec_…` setting: None when unset; a ValueError naming `name` when malformed."""
    if value:
        try:
            secret_key(value)
        except WebhookSecretError as exc:
            raise WebhookSecretError(f"{name} {exc}") from None
    return value or None


def new_secret() -> str:
    """A fresh `whsec_` secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, message_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any `v1,` signature in `header` (space-separated) matches: what a receiver checks."""
    expected = sign(secret, message_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())
