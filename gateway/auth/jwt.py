"""Admin authentication: bearer JWTs verified with pyjwt, and role-based permissions.

Keys and the algorithms each may verify (an explicit allowlist per key type, so a token
can never pick how it is checked):

* ``VOXGATE_ADMIN_JWT_SECRET``: HS256 only.
* ``VOXGATE_ADMIN_JWT_PUBLIC_KEY`` (PEM text, or a path to a PEM file): RS256 for an RSA key,
  ES256 for a P-256 key.
* ``VOXGATE_ADMIN_JWKS_URL``: RS256 / ES256 keys fetched (and cached) by ``kid``.

Every JWKS fetch (admin and tenants' browser keys) goes through `fetch_jwks`: https only,
the host resolved and every address checked (no loopback, private, link-local, unique-local,
CGNAT or metadata address) unless the host is in ``VOXGATE_JWKS_ALLOWED_HOSTS`` (the admin
JWKS URL's own host always is), a connection to a checked address, no redirects, and at most
one fetch per ``JWKS_REFETCH_COOLDOWN_SECONDS`` however many unknown ``kid`` values arrive.

A token must carry ``exp``, ``iat``, ``sub`` and ``aud`` (equal to ``VOXGATE_ADMIN_JWT_AUDIENCE``),
and ``iss`` when ``VOXGATE_ADMIN_JWT_ISSUER`` is set; ``exp``/``iat``/``nbf`` must be numbers,
and ``exp - iat`` at most ``VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS`` (default 86400). Roles come from a ``roles`` list
and/or a ``role`` string; ``tenant_admin`` also needs a ``tenant_id`` claim.
Any verification failure is a 401 ``invalid_token`` whose message never echoes the token.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import logging
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import GatewayError
from gateway.settings import AdminSettings, SettingsError

log = logging.getLogger("voxgate.jwt_auth")

LEEWAY_SECONDS: Final = 30  # tolerated clock skew for exp/nbf/iat
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key must be at least 256 bits
JWKS_CACHE_SECONDS: Final = 300
# At most one JWKS fetch per this many seconds per key set, however many unknown `kid`s arrive
# (a refetch after a failed fetch waits JWKS_RETRY_SECONDS).
JWKS_REFETCH_COOLDOWN_SECONDS: Final = 30.0
JWKS_RETRY_SECONDS: Final = 5.0
JWKS_TIMEOUT_SECONDS: Final = 5.0
JWKS_MAX_BYTES: Final = 256 * 1024
ASYMMETRIC_ALGORITHMS: Final = ("RS256", "ES256")
NUMERIC_CLAIMS: Final = ("exp", "iat", "nbf")


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
    "finance": frozenset(
        {
            Permission.TENANTS_READ,
            Permission.POLICY_READ,
            Permission.USAGE_READ,
            Permission.AUDIT_READ,
            Permission.TIERS_READ,
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
        }
    ),
}
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
    return GatewayError(
        401, message, code="invalid_token", headers={"www-authenticate": 'Bearer error="invalid_token"'}
    )


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


# What fails before a signature verified: the answer says nothing about the keys.
_BEFORE_SIGNATURE: Final = (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.DecodeError)


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


# -- JWKS URLs: where voxgate may fetch keys from ------------------------------------------


class JwksUrlRefused(ValueError):
    """A JWKS URL, or an address its host resolves to, that voxgate will not fetch from."""


_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_LOOPBACK_NAMES: Final = ("localhost", ".localhost")


def normalize_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def parse_allowed_hosts(raw: str | None) -> frozenset[str]:
    """`VOXGATE_JWKS_ALLOWED_HOSTS`: comma-separated host names (or IP literals) exempt from the address checks."""
    return frozenset(normalize_host(h) for h in (raw or "").split(",") if h.strip())


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why voxgate will not connect to `address` for a JWKS, or None for a public address.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by it.
    """
    if isinstance(address, ipaddress.IPv6Address):
        teredo = address.teredo
        embedded = address.ipv4_mapped or address.sixtofour or (teredo[1] if teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_address(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives here)"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (CGNAT)"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.ip_network("fc00::/7"):
        return "unique-local (cloud metadata lives here too)"
    if address.is_private:
        return "private"
    if address.is_multicast or address.is_unspecified or address.is_reserved or not address.is_global:
        return "not a public address"
    return None


def _numeric_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host written as a number stands for (`127.1`, `0x7f.1`, `2130706433`, `::1`)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0]) if infos else None


def check_jwks_url(url: str, allowed_hosts: frozenset[str] = frozenset()) -> SplitResult:
    """Refuse a JWKS URL voxgate must not fetch, without resolving its host (`JwksUrlRefused`).

    https only; no user info; a host written as an IP literal must be public, and so must
    `localhost`. A host in `allowed_hosts` may be anything and may use plain http.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise JwksUrlRefused("the JWKS URL is malformed") from None
    host = normalize_host(parts.hostname or "")
    if not host or not parts.netloc or any(ord(c) < 0x21 for c in url):
        raise JwksUrlRefused("the JWKS URL needs a host and no spaces or control characters")
    if "@" in parts.netloc or "%" in host:
        raise JwksUrlRefused("the JWKS URL must not carry user info or an encoded host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise JwksUrlRefused("the JWKS URL has an invalid port") from None
    allowed = host in allowed_hosts
    if parts.scheme != "https" and not (allowed and parts.scheme == "http"):
        raise JwksUrlRefused("the JWKS URL must be https:// (plain http only for a host in VOXGATE_JWKS_ALLOWED_HOSTS)")
    if allowed:
        return parts
    if host in _LOOPBACK_NAMES[:1] or host.endswith(_LOOPBACK_NAMES[1]):
        raise JwksUrlRefused("the JWKS URL's host is loopback")
    literal = _numeric_host(host)
    if literal is not None and (reason := refused_address(literal)) is not None:
        raise JwksUrlRefused(f"the JWKS URL's address is {reason}")
    return parts


def resolve_jwks_host(parts: SplitResult, allowed_hosts: frozenset[str] = frozenset()) -> list[str]:
    """Resolve the URL's host and return its addresses, every one checked (`JwksUrlRefused` if
    any is not public, unless the host is allowed). Blocking: call it off the event loop."""
    host = normalize_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise OSError(f"cannot resolve the JWKS host: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if host not in allowed_hosts:
        for address in addresses:
            reason = refused_address(ipaddress.ip_address(address))
            if reason is not None:
                raise JwksUrlRefused(f"the JWKS host resolves to an address that is {reason}")
    if not addresses:
        raise OSError("the JWKS host has no address")
    return addresses


def fetch_jwks(url: str, allowed_hosts: frozenset[str] = frozenset(), timeout: float = JWKS_TIMEOUT_SECONDS) -> Any:
    """GET a JWKS document: the URL checked, the host resolved and every address checked, then a
    connection to a checked address (so a DNS answer cannot change in between). Redirects are
    not followed; the body is at most `JWKS_MAX_BYTES`. Blocking: call it off the event loop."""
    parts = check_jwks_url(url, allowed_hosts)
    host = normalize_host(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock: socket.socket | None = None
    last_error: OSError | None = None
    for address in resolve_jwks_host(parts, allowed_hosts):
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
            break
        except OSError as exc:
            last_error = exc
    if sock is None:
        raise last_error or OSError("could not connect to the JWKS host")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn.sock = sock  # already connected to the checked address
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Accept": "application/json", "User-Agent": "voxgate-jwks"})
        with conn.getresponse() as response:
            if response.status != 200:
                raise OSError(f"the JWKS endpoint answered {response.status} (redirects are not followed)")
            body = response.read(JWKS_MAX_BYTES + 1)
        if len(body) > JWKS_MAX_BYTES:
            raise OSError(f"the JWKS document is larger than {JWKS_MAX_BYTES // 1024} KiB")
        return json.loads(body)
    finally:
        conn.close()
        sock.close()


class GuardedJWKClient(jwt.PyJWKClient):
    """pyjwt's JWKS client with voxgate's fetch (`fetch_jwks`) and a refetch cooldown of its own.

    pyjwt (>= 2.14) refetches for an unknown `kid` at most once per `cooldown_duration`;
    this client also never goes to the network more than once per cooldown (once per
    `JWKS_RETRY_SECONDS` after a failure), whatever pyjwt version asks it to.
    """

    def __init__(
        self,
        uri: str,
        allowed_hosts: frozenset[str] = frozenset(),
        cooldown_seconds: float = JWKS_REFETCH_COOLDOWN_SECONDS,
    ) -> None:
        super().__init__(
            uri,
            cache_keys=False,
            lifespan=JWKS_CACHE_SECONDS,
            timeout=JWKS_TIMEOUT_SECONDS,
            cooldown_duration=cooldown_seconds,
        )
        self.allowed_hosts = allowed_hosts
        self.cooldown_seconds = cooldown_seconds
        self._fetch_lock = threading.Lock()
        self._payload: dict[str, Any] | None = None
        self._fetched_at = -math.inf
        self._failed_at = -math.inf

    def fetch_data(self) -> Any:
        with self._fetch_lock:
            now = time.monotonic()
            if self._payload is not None and now - self._fetched_at < self.cooldown_seconds:
                return self._payload  # a refetch inside the cooldown gets what was fetched last
            if now - self._failed_at < JWKS_RETRY_SECONDS:
                raise jwt.PyJWKClientConnectionError("the JWKS endpoint failed moments ago; not asking again yet")
            try:
                payload = fetch_jwks(self.uri, self.allowed_hosts)
            except JwksUrlRefused as exc:
                self._failed_at = now
                log.warning("refused to fetch a JWKS from %s: %s", urlsplit(self.uri).hostname, exc)
                raise jwt.PyJWKClientConnectionError(str(exc)) from None
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self._failed_at = now
                raise jwt.PyJWKClientConnectionError(f"could not fetch the JWKS: {exc}") from None
            if not isinstance(payload, dict):
                self._failed_at = now
                raise jwt.PyJWKClientError("The JWKS endpoint did not return a JSON object")
            self._payload, self._fetched_at = payload, now
            if self.jwk_set_cache is not None:
                self.jwk_set_cache.put(payload)
            return payload


class KeySet:
    """The keys one issuer may sign with, and the one algorithm each key type may verify.

    Shared by admin tokens and browser tokens (`gateway.auth.browser`): an HS256 secret,
    a PEM public key (RS256 or ES256, by key type) and/or a JWKS URL (RS256 / ES256 by
    ``kid``). The token's header never picks how it is checked beyond this allowlist, so
    ``alg: none`` and HS256-signed-with-the-public-key tokens find no key.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        public: tuple[Any, str] | None = None,
        jwks_url: str | None = None,
        jwks_allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.secret = secret
        self.public = public
        # Every fetch goes through `fetch_jwks` (address checks, no redirects) and the refetch cooldown.
        self.jwks = GuardedJWKClient(jwks_url, jwks_allowed_hosts) if jwks_url else None

    @property
    def configured(self) -> bool:
        return self.secret is not None or self.public is not None or self.jwks is not None

    async def keys_for(self, token: str, previous_secret: bytes | None = None) -> tuple[list[Any], list[str]]:
        """The keys to try, in order, and the single algorithm to verify `token` with, or a 401.

        `previous_secret` is an HS256 secret a rotation replaced and still accepts (browser
        tokens, `gateway.auth.browser`); it is tried after the current secret.
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

    async def decode(
        self,
        token: str,
        *,
        audience: str,
        issuer: str | None,
        required: list[str],
        previous_secret: bytes | None = None,
        no_key_message: str | None = None,
    ) -> dict[str, Any]:
        """Verify signature and registered claims; every failure is a safe 401 ``invalid_token``.

        With `no_key_message`, every failure before a signature verified (no key for the
        algorithm, unknown `kid`, a bad signature) says just that, so the answer cannot tell a
        caller without a key anything about the keys (browser tokens: whether the tenant exists).
        `exp`, `iat` and `nbf` must be numbers (pyjwt alone takes `"exp": "1999999999"`).
        """
        try:
            keys, algorithms = await self.keys_for(token, previous_secret)
        except GatewayError:
            if no_key_message is None:
                raise
            raise invalid_token(no_key_message) from None
        options: dict[str, Any] = {
            "algorithms": algorithms,
            "audience": audience,
            "issuer": issuer,
            "options": {"require": required},
            "leeway": LEEWAY_SECONDS,
        }
        try:
            claims = _decode_with_first_matching_key(token, keys, options)
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"The token lacks the required {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError as exc:
            if no_key_message is not None and isinstance(exc, _BEFORE_SIGNATURE):
                raise invalid_token(no_key_message) from None
            message = next((m for kind, m in _SAFE_MESSAGES if isinstance(exc, kind)), "The token is invalid.")
            raise invalid_token(message) from None
        for name in NUMERIC_CLAIMS:
            value = claims.get(name)
            if name in claims and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise invalid_token(f"The token's {name!r} claim must be a number.")
        return claims


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

    def __init__(self, settings: AdminSettings, jwks_allowed_hosts: frozenset[str] = frozenset()) -> None:
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._max_lifetime = settings.jwt_max_lifetime_seconds
        secret: bytes | None = None
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.encode()
            if len(secret) < MIN_SECRET_BYTES:
                raise SettingsError(f"VOXGATE_ADMIN_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        public = _public_key(settings.jwt_public_key) if settings.jwt_public_key is not None else None
        allowed = jwks_allowed_hosts
        if settings.jwks_url is not None:
            # The operator named this host: it may be internal (and plain http), unlike a tenant's JWKS URL.
            allowed = allowed | {normalize_host(urlsplit(settings.jwks_url).hostname or "")}
        self._keys = KeySet(secret, public, settings.jwks_url, allowed)

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
