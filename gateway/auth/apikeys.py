"""API key secrets: generation, hashing and a cheap format check. Pure standard library.

A secret looks like ``vg_live_`` followed by 43 URL-safe base64 characters (256 random bits).
Only its SHA-256 digest is stored; the first 12 characters (the "prefix") are kept too so a
human can tell keys apart in listings without the secret ever being persisted.

SHA-256 without a salt or a slow KDF is the right tool here: the secret is 256 bits of
randomness, so there is nothing to brute-force, and a deterministic hash allows an indexed
lookup on every connection.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from gateway.ids import API_KEY_PREFIX, new_id

SECRET_PREFIX = "vg_live_"  # noqa: S105 -- a public marker, not a credential
SECRET_RANDOM_BYTES = 32
SECRET_RANDOM_CHARS = 43  # len(secrets.token_urlsafe(32)): base64 of 32 bytes, unpadded
SECRET_LENGTH = len(SECRET_PREFIX) + SECRET_RANDOM_CHARS
DISPLAY_PREFIX_LENGTH = 12

_SECRET_SHAPE = re.compile(re.escape(SECRET_PREFIX) + rf"[A-Za-z0-9_-]{{{SECRET_RANDOM_CHARS}}}")


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A freshly minted key. ``secret`` is shown to its owner once and then forgotten."""

    secret: str = field(repr=False)
    prefix: str
    key_hash: bytes = field(repr=False)


def generate_api_key() -> GeneratedKey:
    """Mint a new secret together with its display prefix and its SHA-256 digest."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)
    return GeneratedKey(secret=secret, prefix=display_prefix(secret), key_hash=hash_api_key(secret))


def hash_api_key(secret: str) -> bytes:
    """The 32-byte SHA-256 digest of the whole secret, as stored in ``api_keys.key_hash``."""
    return hashlib.sha256(secret.encode("utf-8")).digest()


def display_prefix(secret: str) -> str:
    """The leading characters of a secret that are safe to store and show to humans."""
    return secret[:DISPLAY_PREFIX_LENGTH]


def looks_like_api_key(candidate: object) -> bool:
    """True if ``candidate`` has the exact shape of a voxgate secret.

    Run it before any database lookup so garbage (other vendors' keys, empty strings,
    megabyte-long headers) never reaches Postgres.
    """
    return (
        isinstance(candidate, str)
        and len(candidate) == SECRET_LENGTH
        and _SECRET_SHAPE.fullmatch(candidate) is not None
    )


def new_key_id() -> str:
    """A public key id, ``key_`` + 16 base32 characters; safe to show and log."""
    return new_id(API_KEY_PREFIX)
