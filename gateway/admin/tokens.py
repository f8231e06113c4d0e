"""Admin tokens: bearer JWTs verified with `gateway.auth.jwt.KeySet`, and role-based permissions.

Keys (``VOXGATE_ADMIN_JWT_*``; each verifies one algorithm family, see `gateway.auth.jwt`):

* ``VOXGATE_ADMIN_JWT_SECRET``: HS256 only.
* ``VOXGATE_ADMIN_JWT_PUBLIC_KEY`` (PEM text, or a path to a PEM file): RS256 for an RSA key,
  ES256 for a P-256 key.
* ``VOXGATE_ADMIN_JWKS_URL``: RS256 / ES256 keys fetched (and cached) by ``kid``; its own host
  is exempt from the JWKS address checks (`gateway.auth.jwks`), as the operator named it.

A token must carry ``exp``, ``iat``, ``sub`` and ``aud`` (equal to ``VOXGATE_ADMIN_JWT_AUDIENCE``),
and ``iss`` when ``VOXGATE_ADMIN_JWT_ISSUER`` is set; ``exp - iat`` at most
``VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS`` (default 86400). Roles come from a ``roles`` list
and/or a ``role`` string; ``tenant_admin`` also needs a ``tenant_id`` claim, and a ``finance``
token that carries one is scoped to that tenant (docs/admin-api.md, "Roles").
Any verification failure is a 401 ``invalid_token`` whose message never echoes the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.auth.jwks import normalize_host
from gateway.auth.jwt import MIN_SECRET_BYTES, KeySet, invalid_token, load_public_key
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.settings import AdminSettings, SettingsError


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
    ALERTS_READ = "alerts:read"  # a tenant's alert webhook (never its secret)
    ALERTS_WRITE = "alerts:write"  # set or remove a tenant's alert webhook
    # The organization's finance views: the Costs API, the alert delivery log, the dashboard.
    FINANCE_READ = "finance:read"


ROLE_PERMISSIONS: Final[dict[str, frozenset[Permission]]] = {
    "admin": frozenset(Permission),
    "finance": frozenset(
        {
            Permission.TENANTS_READ,
            Permission.POLICY_READ,
            Permission.USAGE_READ,
            Permission.AUDIT_READ,
            Permission.TIERS_READ,
            Permission.ALERTS_READ,
            Permission.FINANCE_READ,
        }
    ),
    # Only ever on the tenant named by the token's tenant_id claim; it cannot change its own
    # policy, tier or status, so a tenant cannot lift the limits its platform team set.
    "tenant_admin": frozenset(
        {
            Permission.TENANTS_READ,
            Permission.KEYS_READ,
            Permission.KEYS_WRITE,
            Permission.POLICY_READ,
            Permission.USAGE_READ,
            Permission.TIERS_READ,
            Permission.ALERTS_READ,
        }
    ),
}
# Always scoped to the token's tenant_id claim (required for them).
SCOPED_ROLES: Final = frozenset({"tenant_admin"})
# Scoped to the token's tenant_id claim when it carries one, else every tenant (read-only roles).
CLAIM_SCOPED_ROLES: Final = frozenset({"finance"})


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Who an admin request is from, as a verified token says."""

    subject: str
    roles: frozenset[str]
    tenant_id: str | None  # the tenant a tenant_admin (or a finance token naming one) is scoped to

    def scoped_role(self, role: str) -> bool:
        """Does `role`, on this token, reach only the tenant of its `tenant_id` claim?"""
        return role in SCOPED_ROLES or (role in CLAIM_SCOPED_ROLES and self.tenant_id is not None)

    def grants(self, permission: Permission, tenant_id: str | None) -> bool:
        """May this principal do `permission`, on `tenant_id` if the route names one?"""
        for role in self.roles:
            if permission not in ROLE_PERMISSIONS.get(role, ()):
                continue
            if not self.scoped_role(role) or tenant_id is None or tenant_id == self.tenant_id:
                return True
        return False

    @property
    def unscoped(self) -> bool:
        """True when some role reaches every tenant (admin, or finance without a tenant_id claim)."""
        return any(role in ROLE_PERMISSIONS and not self.scoped_role(role) for role in self.roles)

    def sees_tenant(self, tenant_id: str) -> bool:
        return self.unscoped or tenant_id == self.tenant_id


def insufficient_role(permission: Permission) -> GatewayError:
    return GatewayError(403, f"This token's roles do not allow {permission.value}.", code="insufficient_role")


class AdminTokenVerifier:
    """Turns a bearer token into an `AdminPrincipal`, or raises a 401 GatewayError."""

    def __init__(
        self, settings: AdminSettings, jwks_allowed_hosts: frozenset[str] = frozenset(), clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._max_lifetime = settings.jwt_max_lifetime_seconds
        secret: bytes | None = None
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.encode()
            if len(secret) < MIN_SECRET_BYTES:
                raise SettingsError(f"VOXGATE_ADMIN_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        public = load_public_key(settings.jwt_public_key) if settings.jwt_public_key is not None else None
        allowed = jwks_allowed_hosts
        if settings.jwks_url is not None:
            # The operator named this host: it may be internal (and plain http), unlike a tenant's JWKS URL.
            allowed = allowed | {normalize_host(urlsplit(settings.jwks_url).hostname or "")}
        self._keys = KeySet(secret, public, settings.jwks_url, allowed, clock)

    @property
    def configured(self) -> bool:
        return self._keys.configured

    async def verify(self, token: str) -> AdminPrincipal:
        """Verify signature and claims; map every failure to a safe 401."""
        if not self.configured:
            raise invalid_token("The admin API is disabled: no admin JWT key is configured.")
        required = ["exp", "iat", "aud", "sub"] + (["iss"] if self._issuer else [])
        claims = await self._keys.decode(token, audience=self._audience, issuer=self._issuer, required=required)
        if claims["exp"] - claims["iat"] > self._max_lifetime:
            raise invalid_token(
                f"The token lives too long: 'exp' may be at most {self._max_lifetime} seconds "
                "after 'iat' (VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS)."
            )
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
    if tenant_id == "" and not roles & (SCOPED_ROLES | CLAIM_SCOPED_ROLES):
        tenant_id = None  # an empty claim scopes nothing on a role that reaches every tenant (admin)
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise invalid_token("The token's 'tenant_id' claim must be a non-empty string.")
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
