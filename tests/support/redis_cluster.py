"""Real Redis topologies on loopback for tests: a 3-node Redis Cluster, and a master + replica
watched by Sentinels.

Each one runs the machine's own `redis-server` (7.x; CI installs it) as child processes in a
temporary directory, on free ports, without persistence, and is torn down at the end. A test
that needs a topology gets its URL in voxgate's own scheme (`redis+cluster://`,
`redis+sentinel://`, docs/live-state.md "Topologies"), so it exercises the same parsing as a
deployment. Without `redis-server` the fixtures skip loudly, except under CI=true, where they fail.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 20.0
SENTINEL_MASTER = "voxgate-test"
# How long a sentinel waits before it calls a silent master down; short so a failover test
# fits in CI (a deployment's default is 30 s).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def redis_server_or_skip() -> str:
    """The `redis-server` binary; a missing one skips locally and fails under CI=true."""
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed: the Redis Cluster and Sentinel tests need it (apt-get install redis)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout


def _wait_until(what: str, check: object, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout:g} s")


@dataclass
class RedisProcesses:
    """Child redis-server processes (data nodes and sentinels) living in one temporary directory."""

    home: Path
    binary: str
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        node_dir = self.home / str(port)
        node_dir.mkdir()
        argv = [self.binary]
        if config is not None:  # a sentinel rewrites its config file, so it needs one of its own
            conf = node_dir / "sentinel.conf"
            conf.write_text(config)
            argv += [str(conf), "--sentinel"]
        argv += ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(node_dir), "--save", ""]
        argv += ["--appendonly", "no", "--logfile", str(node_dir / "redis.log"), *args]
        self.procs[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(f"redis-server on port {port} answering", lambda: _answers(port))

    def kill(self, port: int) -> None:
        """SIGKILL one process: no shutdown, no goodbye to its peers."""
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of `nodes` primaries (no replicas) on loopback; yields its `redis+cluster://` URL."""
    processes = RedisProcesses(Path(tempfile.mkdtemp(prefix="voxgate-redis-cluster-")), redis_server_or_skip())
    try:
        ports = _free_ports(nodes * 2)
        data, bus = ports[:nodes], ports[nodes:]
        for port, bus_port in zip(data, bus, strict=True):
            processes.start(
                port, "--cluster-enabled", "yes", "--cluster-port", str(bus_port), "--cluster-node-timeout", "2000"
            )
        addresses = [f"127.0.0.1:{p}" for p in data]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        for port in data:  # every node has seen every slot assigned before a test talks to it
            _wait_until(f"cluster state ok on {port}", lambda p=port: "cluster_state:ok" in _cli(p, "cluster", "info"))
        yield "redis+cluster://" + ",".join(addresses)
    finally:
        processes.stop_all()


@dataclass
class SentinelSetup:
    """A master, its replica and the sentinels watching them, with handles to break them."""

    processes: RedisProcesses
    master_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SENTINEL_MASTER}"

    def master_address(self) -> tuple[str, int]:
        """Where the sentinels currently say the master is."""
        host, port = _cli(self.sentinel_ports[0], "sentinel", "get-master-addr-by-name", SENTINEL_MASTER).split()
        return host, int(port)

    def kill_master(self) -> None:
        self.processes.kill(self.master_port)


@contextlib.contextmanager
def redis_sentinel(sentinels: int = 3) -> Iterator[SentinelSetup]:
    """A master + one replica on loopback, watched by `sentinels` sentinels (quorum: a majority),
    with short timeouts (`DOWN_AFTER_MS`) so a failover takes seconds."""
    processes = RedisProcesses(Path(tempfile.mkdtemp(prefix="voxgate-redis-sentinel-")), redis_server_or_skip())
    try:
        master, replica, *watchers = _free_ports(2 + sentinels)
        processes.start(master)
        processes.start(replica, "--replicaof", "127.0.0.1", str(master))
        _wait_until("the replica in sync", lambda: "master_link_status:up" in _cli(replica, "info", "replication"))
        quorum = sentinels // 2 + 1
        config = (
            f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} {quorum}\n"
            f"sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        )
        for port in watchers:
            processes.start(port, config=config)
        setup = SentinelSetup(processes, master, replica, watchers)
        for port in watchers:  # each sentinel has found the replica and its peers
            _wait_until(
                f"sentinel {port} sees the replica",
                lambda p=port: (
                    "slaves=1" in _cli(p, "info", "sentinel")
                    and f"sentinels={sentinels}" in _cli(p, "info", "sentinel")
                ),
            )
        yield setup
    finally:
        processes.stop_all()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A 3-node Redis Cluster for the test session (import this fixture into a test module)."""
    with redis_cluster() as url:
        yield url
