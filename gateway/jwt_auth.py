"""Admin authentication: bearer JWTs verified with pyjwt, and role-based permissions.

Keys and the algorithms each may verify (an explicit allowlist per key type, so a token
can never pick how it is checked):

* ``VOXGATE_ADMIN_JWT_SECRET``: HS256 only.
* ``VOXGATE_ADMIN_JWT_PUBLIC_KEY`` (PEM text, or a path to a PEM file): RS256 for an RSA key,
  ES256 for a P-256 key.
* ``VOXGATE_ADMIN_JWKS_URL``: RS256 / ES256 keys fetched (and cached) by ``kid``.

A token must carry ``exp``, ``sub`` and ``aud`` (equal to ``VOXGATE_ADMIN_JWT_AUDIENCE``),
and ``iss`` when ``VOXGATE_ADMIN_JWT_ISSUER`` is set. Roles come from a ``roles`` list
and/or a ``role`` string; ``tenant_admin`` also needs a ``tenant_id`` claim.
Any verification failure is a 401 ``invalid_token`` whose message never echoes the token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import GatewayError
from gateway.settings import AdminSettings, SettingsError

LEEWAY_SECONDS: Final = 30  # tolerated clock skew for exp/nbf/iat
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key must be at least 256 bits
JWKS_CACHE_SECONDS: Final = 300
ASYMMETRIC_ALGORITHMS: Final = ("RS256", "ES256")


class Permission(StrEnum):
    TENANTS_CREATE = "tenants:create"
    TENANTS_READ = "tenants:read"
    TENANTS_WRITE = "tenants:write"  # disable, enable, tier assignment
    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    POLICY_READ = "policy:read"
    POLICY_WRITE = "policy:write"
    USAGE_READ = "usage:read"
    AUDIT_READ = "audit:read"
    TIERS_READ = "tiers:read"


ROLE_PERMISSIONS: Final[dict[str, frozenset[Permission]]] = {
    "admin": frozenset(Permission),
    "finance": frozenset({
        Permission.TENANTS_READ, Permission.POLICY_READ, Permission.USAGE_READ, Permission.AUDIT_READ,
        Permission.TIERS_READ,
    }),
    # Only ever on the tenant named by the token's tenant_id claim; it cannot change its own
    # policy, tier or status, so a tenant cannot lift the limits its platform team set.
    "tenant_admin": frozenset({
        Permission.TENANTS_READ, Permission.KEYS_READ, Permission.KEYS_WRITE, Permission.POLICY_READ,
        Permission.USAGE_READ, Permission.TIERS_READ,
    }),
}  # fmt: skip
SCOPED_ROLES: Final = frozenset({"tenant_admin"})


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who an admin request is from, as a verified token says."""

    subject: str
    roles: frozenset[str]
    tenant_id: str | None  # the tenant a tenant_admin is scoped to

    def grants(self, permission: Permission, tenant_id: str | None) -> bool:
        """May this principal do `permission`, on `tenant_id` if the route names one?"""
        for role in self.roles:
            if permission not in ROLE_PERMISSIONS.get(role, ()):
                continue
            if role not in SCOPED_ROLES or tenant_id is None or tenant_id == self.tenant_id:
                return True
        return False

    @property
    def unscoped(self) -> bool:
        """True when some role reaches every tenant (admin or finance)."""
        return any(role in ROLE_PERMISSIONS and role not in SCOPED_ROLES for role in self.roles)

    def sees_tenant(self, tenant_id: str) -> bool:
        return self.unscoped or tenant_id == self.tenant_id


def invalid_token(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_token",
                        headers={"www-authenticate": 'Bearer error="invalid_token"'})  # fmt: skip


def insufficient_role(permission: Permission) -> GatewayError:
    return GatewayError(403, f"This token's roles do not allow {permission.value}.", code="insufficient_role")


_SAFE_MESSAGES: Final[tuple[tuple[type[jwt.InvalidTokenError], str], ...]] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.InvalidAudienceError, "The token's audience is not accepted."),
    (jwt.InvalidIssuerError, "The token's issuer is not accepted."),
    (jwt.InvalidSignatureError, "The token's signature is invalid."),
    (jwt.ImmatureSignatureError, "The token is not valid yet."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not accepted."),
    (jwt.DecodeError, "The token is malformed."),
)


def _public_key(text: str, setting: str = "VOXGATE_ADMIN_JWT_PUBLIC_KEY") -> tuple[Any, str]:
    """Load a PEM public key (or a file holding one); returns the key and its one algorithm."""
    pem = text if "-----BEGIN" in text else Path(text).read_text(encoding="ascii")
    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except ValueError as exc:
        raise SettingsError(f"{setting} is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise SettingsError(f"{setting} must be an RSA or P-256 EC public key")


class KeySet:
    """The keys one issuer may sign with, and the one algorithm each key type may verify.

    Shared by admin tokens and browser tokens (`gateway.browser_auth`): an HS256 secret,
    a PEM public key (RS256 or ES256, by key type) and/or a JWKS URL (RS256 / ES256 by
    ``kid``). The token's header never picks how it is checked beyond this allowlist, so
    ``alg: none`` and HS256-signed-with-the-public-key tokens find no key.
    """

    def __init__(self, secret: bytes | None = None, public: tuple[Any, str] | None = None,
                 jwks_url: str | None = None) -> None:  # fmt: skip
        self.secret = secret
        self.public = public
        self.jwks = (
            jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=JWKS_CACHE_SECONDS, timeout=5) if jwks_url else None
        )

    @property
    def configured(self) -> bool:
        return self.secret is not None or self.public is not None or self.jwks is not None

    async def keys_for(self, token: str, previous_secret: bytes | None = None) -> tuple[list[Any], list[str]]:
        """The keys to try, in order, and the single algorithm to verify `token` with, or a 401.

        `previous_secret` is an HS256 secret a rotation replaced and still accepts (browser
        tokens, `gateway.browser_auth`); it is tried after the current secret.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid_token("The token is malformed.") from None
        alg = header.get("alg")
        if alg == "HS256":
            hs256_keys = [key for key in (self.secret, previous_secret) if key is not None]
            if hs256_keys:
                return hs256_keys, ["HS256"]
        if alg in ASYMMETRIC_ALGORITHMS:
            if self.public is not None and self.public[1] == alg:
                return [self.public[0]], [alg]
            if self.jwks is not None:
                try:
                    # PyJWKClient fetches over blocking HTTP; keep it off the event loop.
                    jwk = await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)
                except (jwt.PyJWKClientError, jwt.InvalidTokenError):
                    raise invalid_token("No trusted key matches the token.") from None
                if jwk.algorithm_name != alg:
                    raise invalid_token("The token's algorithm is not accepted.")
                return [jwk], [alg]
        raise invalid_token("The token's algorithm is not accepted.")

    async def decode(self, token: str, *, audience: str, issuer: str | None, required: list[str],
                     previous_secret: bytes | None = None) -> dict[str, Any]:  # fmt: skip
        """Verify signature and registered claims; every failure is a safe 401 ``invalid_token``."""
        keys, algorithms = await self.keys_for(token, previous_secret)
        options: dict[str, Any] = {"algorithms": algorithms, "audience": audience, "issuer": issuer,
                                   "options": {"require": required}, "leeway": LEEWAY_SECONDS}  # fmt: skip
        try:
            return _decode_with_first_matching_key(token, keys, options)
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"The token lacks the required {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError as exc:
            message = next((m for kind, m in _SAFE_MESSAGES if isinstance(exc, kind)), "The token is invalid.")
            raise invalid_token(message) from None


def _decode_with_first_matching_key(token: str, keys: list[Any], options: dict[str, Any]) -> dict[str, Any]:
    """Decode with the first key whose signature matches. pyjwt checks the signature before
    any claim, so only a signature mismatch moves on to the next key."""
    for key in keys[:-1]:
        try:
            claims: dict[str, Any] = jwt.decode(token, key, **options)
        except jwt.InvalidSignatureError:
            continue
        return claims
    last: dict[str, Any] = jwt.decode(token, keys[-1], **options)
    return last


class AdminTokenVerifier:
    """Turns a bearer token into an `AdminPrincipal`, or raises a 401 GatewayError."""

    def __init__(self, settings: AdminSettings) -> None:
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        secret: bytes | None = None
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.encode()
            if len(secret) < MIN_SECRET_BYTES:
                raise SettingsError(f"VOXGATE_ADMIN_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        public = _public_key(settings.jwt_public_key) if settings.jwt_public_key is not None else None
        self._keys = KeySet(secret, public, settings.jwks_url)

    @property
    def configured(self) -> bool:
        return self._keys.configured

    async def verify(self, token: str) -> AdminPrincipal:
        """Verify signature and claims; map every failure to a safe 401."""
        if not self.configured:
            raise invalid_token("The admin API is disabled: no admin JWT key is configured.")
        required = ["exp", "aud", "sub"] + (["iss"] if self._issuer else [])
        claims = await self._keys.decode(token, audience=self._audience, issuer=self._issuer, required=required)
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> AdminPrincipal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise invalid_token("The token's 'sub' claim must be a non-empty string.")
    roles: set[str] = set()
    raw_roles = claims.get("roles", [])
    if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
        raise invalid_token("The token's 'roles' claim must be a list of strings.")
    roles.update(raw_roles)
    role = claims.get("role")
    if role is not None:
        if not isinstance(role, str):
            raise invalid_token("The token's 'role' claim must be a string.")
        roles.add(role)
    tenant_id = claims.get("tenant_id")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise invalid_token("The token's 'tenant_id' claim must be a string.")
    if "tenant_admin" in roles and not tenant_id:
        raise invalid_token("A tenant_admin token needs a 'tenant_id' claim.")
    return AdminPrincipal(subject=subject, roles=frozenset(roles), tenant_id=tenant_id)


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer`` header, or a 401."""
    if not authorization:
        raise invalid_token("Send an admin JWT as 'Authorization: Bearer <token>'.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid_token("Send an admin JWT as 'Authorization: Bearer <token>'.")
    return token
