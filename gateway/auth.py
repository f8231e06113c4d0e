"""Tenant credentials on the way in, and the safety identifier on the way out."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."
END_USER_HEADER = "x-voxgate-end-user"


@dataclass(frozen=True, slots=True)
class PresentedCredentials:
    """What a client presented: a bearer secret, and whether it came in a subprotocol."""

    secret: str | None
    via_subprotocol: bool
    offered_subprotocols: tuple[str, ...]
    end_user: str | None


def read_credentials(headers: Iterable[tuple[bytes, bytes]], subprotocols: Sequence[str]) -> PresentedCredentials:
    """Take the tenant secret from `Authorization: Bearer`, else from the browser subprotocol."""
    secret: str | None = None
    end_user: str | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                secret = token.strip()
        elif lname == END_USER_HEADER.encode():
            end_user = value.decode("utf-8", "replace").strip() or None
    via_subprotocol = False
    if secret is None:
        for proto in subprotocols:
            if proto.startswith(INSECURE_KEY_PROTOCOL) and len(proto) > len(INSECURE_KEY_PROTOCOL):
                secret = proto[len(INSECURE_KEY_PROTOCOL) :]
                via_subprotocol = True
                break
    return PresentedCredentials(secret, via_subprotocol, tuple(subprotocols), end_user)


def accepted_subprotocol(offered: Sequence[str]) -> str | None:
    """Answer `realtime` when offered; never echo the protocol that carries a key."""
    if "realtime" in offered:
        return "realtime"
    return None


def safety_identifier(secret: bytes, tenant_id: str, end_user: str) -> str:
    """A stable keyed hash of (tenant, end user): OpenAI sees who, never the raw id."""
    mac = hmac.new(secret, f"{tenant_id}\x00{end_user}".encode(), hashlib.sha256)
    return "vg_" + mac.hexdigest()[:40]
