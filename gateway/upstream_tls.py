"""TLS toward the upstream (OpenAI, a private gateway, an egress proxy), and why a connect failed.

Every upstream connection voxgate opens takes its client context from `client_context`: the
fast relay's raw upgrade, the `websockets` client (Live, sidebands, attach, translation) and
the httpx clients (client secrets, calls, hangups). The context trusts the system store (and
`SSL_CERT_FILE`/`SSL_CERT_DIR` when set) plus `VOXGATE_UPSTREAM_CA_FILE`, added to it, never
replacing it. One context per CA file per process: building one loads the store (milliseconds
of CPU), and every connection shares it.

A connect that fails is described by `describe_failure`: a bounded `cause` (the
`voxgate_upstream_connect_failures_total` label, the log line) and a short detail (the OpenSSL
verify message, say) that goes into the client's error message. Neither carries a secret: the
exceptions classified here come from DNS, TCP and TLS, before any header is sent.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from gateway.errors import GatewayError
from gateway.settings import UpstreamSettings

log = logging.getLogger("voxgate.upstream")

# The bounded set of causes (metric label values).
CAUSES: Final = (
    "certificate",  # the chain did not verify (unknown CA, expired, self-signed)
    "hostname_mismatch",  # the certificate verified but is not for the host we asked for
    "tls",  # any other TLS failure (protocol version, handshake alert, reset mid-handshake)
    "timeout",  # no completed handshake within VOXGATE_UPSTREAM_CONNECT_TIMEOUT
    "connection_refused",
    "connection_reset",
    "dns",  # the upstream host name did not resolve
    "network",  # any other socket error (unreachable network, no route)
    "bad_handshake",  # the upstream answered, but not with a WebSocket upgrade we could use
)
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH_CODES: Final = frozenset({62, 64})
# One warning per cause every this many seconds (at 300 refusals a second, a line per session floods).
FAILURE_LOG_INTERVAL_S: Final = 10.0


@functools.lru_cache(maxsize=8)
def _context_for(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system store, or SSL_CERT_FILE / SSL_CERT_DIR
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)  # added to it
    return context


def client_context(settings: UpstreamSettings) -> ssl.SSLContext:
    """The process's client context for `settings`' upstream: system trust plus its CA file."""
    return _context_for(str(settings.ca_file) if settings.ca_file is not None else None)


def check_ca_file(path: Path) -> None:
    """Raise ValueError (a one-line reason) unless `path` is a readable PEM bundle of CA certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError:  # an OSError too
        raise ValueError(f"{path} holds no PEM CA certificate") from None
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{path} is not readable ({exc.strerror or type(exc).__name__})") from None
    if not context.get_ca_certs():
        raise ValueError(f"{path} holds no PEM CA certificate")


def upstream_ca_file(raw: str | None) -> Path | None:
    """VOXGATE_UPSTREAM_CA_FILE's value, checked; ValueError names the variable and the problem."""
    if not raw:
        return None
    try:
        check_ca_file(Path(raw))
    except ValueError as exc:
        raise ValueError(f"VOXGATE_UPSTREAM_CA_FILE: {exc}") from None
    return Path(raw)


def http_client(settings: UpstreamSettings, **options: Any) -> httpx.AsyncClient:
    """An httpx client toward the upstream, verifying with `client_context(settings)`."""
    return httpx.AsyncClient(verify=client_context(settings), **options)


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    cause: str  # one of CAUSES
    detail: str  # for people: the verify message, the errno text; never a secret

    def sentence(self) -> str:
        return f"{self.cause.replace('_', ' ')}: {self.detail}" if self.detail else self.cause.replace("_", " ")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps (httpx wraps httpcore wraps the socket's error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_failure(exc: BaseException) -> ConnectFailure:
    """Why connecting to the upstream failed, as a bounded cause and a short detail."""
    for err in _chain(exc):
        if isinstance(err, ssl.SSLCertVerificationError):
            message = str(err.verify_message or err.reason or "certificate verify failed")
            if err.verify_code in _NAME_MISMATCH_CODES:
                return ConnectFailure("hostname_mismatch", message)
            return ConnectFailure("certificate", f"certificate verify failed ({message})")
        if isinstance(err, ssl.SSLError):
            return ConnectFailure("tls", str(err.reason or err.strerror or type(err).__name__))
        if isinstance(err, socket.gaierror):
            return ConnectFailure("dns", f"the upstream host name did not resolve ({err.strerror})")
        if isinstance(err, TimeoutError | httpx.TimeoutException):
            return ConnectFailure("timeout", "no completed handshake within the connect timeout")
        if isinstance(err, ConnectionRefusedError):
            return ConnectFailure("connection_refused", "the upstream refused the TCP connection")
        if isinstance(err, ConnectionResetError | BrokenPipeError):
            return ConnectFailure("connection_reset", "the upstream reset the connection")
        if isinstance(err, OSError) and err.errno is not None:
            return ConnectFailure("network", err.strerror or type(err).__name__)
    for err in _chain(exc):
        # The TLS or socket error itself is sometimes only in the text (httpcore's ConnectError).
        text = str(err).lower()
        if "certificate verify failed" in text:
            if "hostname mismatch" in text or "ip address mismatch" in text:
                return ConnectFailure("hostname_mismatch", str(err))
            return ConnectFailure("certificate", str(err))
        if "name or service not known" in text or "nodename nor servname" in text:
            return ConnectFailure("dns", "the upstream host name did not resolve")
        if "connection refused" in text:
            return ConnectFailure("connection_refused", "the upstream refused the TCP connection")
    if any(isinstance(err, EOFError | ConnectionError) for err in _chain(exc)):
        return ConnectFailure("connection_reset", "the upstream closed the connection during the handshake")
    return ConnectFailure("bad_handshake", "the upstream did not complete the WebSocket upgrade")


class FailureLog:
    """Counts per cause (the metric) and a rate-limited warning per cause."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(CAUSES, 0)
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def record(self, failure: ConnectFailure, what: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[failure.cause] = self.counts.get(failure.cause, 0) + 1
            last = self._last.get(failure.cause)
            if last is not None and now - last < FAILURE_LOG_INTERVAL_S:
                self._quiet[failure.cause] = self._quiet.get(failure.cause, 0) + 1
                return
            self._last[failure.cause] = now
            quiet = self._quiet.pop(failure.cause, 0)
        more = f" ({quiet} more since the last such line)" if quiet else ""
        log.warning(
            "connecting to %s failed: %s%s",
            what,
            failure.sentence(),
            more,
            extra={"fields": {"upstream_failure_cause": failure.cause}},
        )


FAILURES: Final = FailureLog()


def unreachable(exc: BaseException, what: str = "the upstream Realtime API") -> GatewayError:
    """The client's error for a connect that failed with `exc`: logged and counted by its cause.

    The statuses and codes are docs/close-codes.md's: a timeout is a retryable 503
    `upstream_timeout`, anything else a 502 `upstream_unreachable`; the cause is in the message.
    """
    failure = describe_failure(exc)
    FAILURES.record(failure, what)
    if failure.cause == "timeout":
        return GatewayError(
            503,
            f"Timed out connecting to {what} ({failure.detail}).",
            code="upstream_timeout",
            retry_after=1.0,
        )
    return GatewayError(502, f"Could not reach {what}: {failure.sentence()}.", code="upstream_unreachable")


def failure_families() -> Iterator[Any]:
    """`voxgate_upstream_connect_failures_total{cause}` for `GatewayMetrics.watch` (this process's counts)."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(
        "voxgate_upstream_connect_failures",
        "Upstream connects (WebSocket upgrades and HTTP requests) that failed, by cause.",
        labels=["cause"],
    )
    with FAILURES._lock:
        counts = dict(FAILURES.counts)
    for cause in CAUSES:
        family.add_metric([cause], counts.get(cause, 0))
    yield family
