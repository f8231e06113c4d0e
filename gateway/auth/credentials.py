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
            end_user = end_user_from_header(value)
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


def end_user_from_header(raw: bytes) -> str | None:
    """The `X-Voxgate-End-User` value as text: its bytes read as UTF-8 on every transport
    (WebSocket and HTTP), so one end user has one safety identifier."""
    return raw.decode("utf-8", "replace").strip() or None


def safety_identifier(secret: bytes, tenant_id: str, end_user: str) -> str:
    """A stable keyed hash of (tenant, end user): OpenAI sees who, never the raw id.

    End users (a browser token's `sub`, the `X-Voxgate-End-User` header) and tenant keys
    (`key_safety_identifier`) hash in disjoint domains, so no `sub` can take a key's identity.
    """
    return _keyed(secret, f"{tenant_id}\x00{end_user}")


def key_safety_identifier(secret: bytes, tenant_id: str, key_id: str) -> str:
    """The safety identifier of a tenant key acting with no end user named.

    It hashes `tenant_id, 0x01, "key", 0x00, key_id`; an end user hashes `tenant_id, 0x00, end_user`.
    Tenant ids (``ten_`` + base32) hold neither byte, so the two domains never meet.
    """
    return _keyed(secret, f"{tenant_id}\x01key\x00{key_id}")


def _keyed(secret: bytes, message: str) -> str:
    mac = hmac.new(secret, message.encode("utf-8"), hashlib.sha256)
    return "vg_" + mac.hexdigest()[:40]
