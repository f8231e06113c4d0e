"""Where voxgate may fetch a JWKS from, and the one fetch every JWKS goes through (admin and browser keys).

`fetch_jwks`: https only; the host resolved and every address checked (no loopback, private,
link-local, unique-local, CGNAT or metadata address) unless the host is in
``VOXGATE_JWKS_ALLOWED_HOSTS`` (the admin JWKS URL's own host always is); a connection to a
checked address, so a DNS answer cannot change in between; no redirects; a bounded body.
`GuardedJWKClient` adds a refetch cooldown: at most one fetch per
``JWKS_REFETCH_COOLDOWN_SECONDS`` however many unknown ``kid`` values arrive.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import socket
import ssl
import threading
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import jwt

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("voxgate.jwt_auth")

JWKS_CACHE_SECONDS: Final = 300
# At most one JWKS fetch per this many seconds per key set, however many unknown `kid`s arrive
# (a refetch after a failed fetch waits JWKS_RETRY_SECONDS).
JWKS_REFETCH_COOLDOWN_SECONDS: Final = 30.0
JWKS_RETRY_SECONDS: Final = 5.0
JWKS_TIMEOUT_SECONDS: Final = 5.0
JWKS_MAX_BYTES: Final = 256 * 1024


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
        clock: Clock = SYSTEM_CLOCK,
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
        self.clock = clock  # pyjwt times its own key cache with `time.monotonic`
        self._fetch_lock = threading.Lock()
        self._payload: dict[str, Any] | None = None
        self._fetched_at = -math.inf
        self._failed_at = -math.inf

    def fetch_data(self) -> Any:
        with self._fetch_lock:
            now = self.clock.monotonic()
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
