"""A real PgBouncer in transaction mode on loopback, in front of the test Postgres.

Debian's `pgbouncer` package (CI installs it in .ci/run). Transaction mode hands each transaction
to whichever server connection is free, so a client that relies on session state (named prepared
statements, advisory locks, SET) breaks there: the server pool is kept smaller than the client
pools on purpose, so server connections really are shared. A missing binary skips loudly, and
fails under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

SERVER_POOL_SIZE = 4  # server connections per database: fewer than any client pool in the tests


def pgbouncer_or_skip() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if found is None:
        message = "pgbouncer is not installed: the PgBouncer tests need it (apt-get install pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(admin_dsn: str) -> Iterator[int]:
    """PgBouncer (pool_mode=transaction, trust auth) forwarding every database of `admin_dsn`'s
    server; yields its port. Run as the `postgres` user when started as root (it refuses root)."""
    binary = pgbouncer_or_skip()
    target = urlsplit(admin_dsn)
    home = Path(tempfile.mkdtemp(prefix="voxgate-pgbouncer-"))
    port = _free_port()
    user = target.username or "postgres"
    (home / "userlist.txt").write_text(f'"{user}" ""\n')
    run_as = "user = postgres\n" if os.geteuid() == 0 else ""
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_POOL_SIZE}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 1000\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n"
        "ignore_startup_parameters = extra_float_digits\n" + run_as
    )
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        for child in home.iterdir():
            shutil.chown(child, "postgres")
    proc = subprocess.Popen([binary, str(home / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (home / "pgbouncer.log").read_text() if (home / "pgbouncer.log").exists() else ""
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"pgbouncer did not start: {stderr}{log}")
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(home, ignore_errors=True)


def through(port: int, dsn: str) -> str:
    """`dsn` (same user and database) reached through the PgBouncer on `port`."""
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))
