"""Admin JWTs for tests: mint good ones, and hand-craft the malicious ones pyjwt refuses to make."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import jwt

AUDIENCE = "voxgate-admin"
ISSUER = "https://idp.test"
SECRET = secrets.token_urlsafe(48)


def claims(sub: str | None = "alice", roles: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
    if sub is not None:
        base["sub"] = sub
    if roles is not None:
        base["roles"] = roles
    return {**base, **extra}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def admin_token(**extra: Any) -> str:
    return hs256(claims(roles=["admin"], **extra))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A compact JWS built by hand: `hmac_key=None` leaves the signature empty (alg none)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"
