"""TLS termination in `voxgate serve` (VOXGATE_TLS_CERT_FILE / VOXGATE_TLS_KEY_FILE), reloaded on change.

The listening socket gets one server context for its whole life. Its SNI callback, which
OpenSSL calls on every ClientHello (with or without a server name), points the new
connection at the newest good context, so a replaced certificate is used by the next
handshake while live sessions keep the one they negotiated. A change is noticed by polling
the files' mtime, size and inode on the injected clock every `RELOAD_POLL_SECONDS`, or at
once on SIGHUP (`reload_now`); the files are read in a worker thread, never on the loop. A new
pair that does not load (half-written, key not matching) is logged and the previous one kept:
a reload never takes the listener down.

The HTTP app and the fast relay's WebSocket path share the listener, so both are served
over TLS: the relay works on the decrypted stream asyncio (or uvloop) hands it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.clock import Clock

log = logging.getLogger("voxgate.tls")

RELOAD_POLL_SECONDS: Final = 5.0


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context for this pair; raises ValueError (a one-line reason) if it does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # no h2: WebSocket upgrades are HTTP/1.1
    for label, path in (("VOXGATE_TLS_CERT_FILE", cert_file), ("VOXGATE_TLS_KEY_FILE", key_file)):
        if not path.is_file():
            raise ValueError(f"{label} {path} does not exist or is not a file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{label} {path} is not readable")
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or type(exc).__name__
        raise ValueError(
            f"VOXGATE_TLS_CERT_FILE {cert_file} and VOXGATE_TLS_KEY_FILE {key_file} do not load as a PEM "
            f"certificate chain and its private key ({reason})"
        ) from None
    except OSError as exc:
        raise ValueError(f"VOXGATE_TLS_CERT_FILE/VOXGATE_TLS_KEY_FILE: {exc.strerror or exc}") from None
    return context


def tls_files(cert: str | None, key: str | None) -> tuple[Path, Path] | tuple[None, None]:
    """VOXGATE_TLS_CERT_FILE and VOXGATE_TLS_KEY_FILE's values (both or neither, and they must load);
    ValueError names the variable and the problem."""
    cert, key = cert or None, key or None
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        given, missing = ("VOXGATE_TLS_CERT_FILE", "VOXGATE_TLS_KEY_FILE")[:: 1 if cert else -1]
        raise ValueError(f"{given} is set but {missing} is not: TLS termination needs both")
    server_context(Path(cert), Path(key))
    return Path(cert), Path(key)


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class ServingTls:
    """The listener's TLS: `context` for `create_server`, the newest good pair behind it."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._stamps = (_stamp(cert_file), _stamp(key_file))
        self._current = server_context(cert_file, key_file)  # raises ValueError: a startup error
        self.context = server_context(cert_file, key_file)
        self.context.sni_callback = self._select
        self.reloads = 0
        self._reloading = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        if conn.context is not self._current:
            conn.context = self._current

    def reload_now(self) -> None:
        """SIGHUP (called on the loop): reload at once, the files read off the loop (`reload`)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="voxgate-tls-reload-now")
        self._pending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._pending.discard)

    async def reload(self) -> bool:
        """Load the files again in a worker thread (reading files and parsing keys would stall the
        loop), then swap on the loop; True if the new pair is now served (a bad pair is logged, the
        old kept). Reloads run one at a time, so the last one started wins."""
        async with self._reloading:
            fresh = await asyncio.to_thread(self._load)
            if fresh is None:
                return False
            self._current = fresh
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    def _load(self) -> ssl.SSLContext | None:
        """In a worker thread: the stamps, then the pair (None, logged, if it does not load)."""
        self._stamps = (_stamp(self.cert_file), _stamp(self.key_file))
        try:
            return server_context(self.cert_file, self.key_file)
        except ValueError as exc:
            log.error("TLS certificate reload failed, still serving the previous one: %s", exc)
            return None

    def changed(self) -> bool:
        return (_stamp(self.cert_file), _stamp(self.key_file)) != self._stamps

    async def watch(self, clock: Clock, interval: float = RELOAD_POLL_SECONDS) -> None:
        """Reload whenever the files change on disk (mtime, size or inode), until cancelled."""
        while True:
            await clock.sleep(interval)
            if await asyncio.to_thread(self.changed):
                # A writer may be between the certificate and the key: give it a moment, once.
                await asyncio.sleep(0.1)
                await self.reload()


def use_tls(config: Any, tls: ServingTls) -> None:
    """Make the uvicorn `config` listen with `tls.context` (uvicorn builds no context of its own)."""
    config.load()  # what `Server.serve` would do first; it sets `config.ssl` from its own ssl_* options
    config.ssl = tls.context
