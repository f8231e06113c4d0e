"""Processes and /proc for the benchmark runner: start, wait, stop, and read CPU and memory."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [pid] + [c.pid for c in parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) seconds from /proc/<pid>/stat, summed over a process tree."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime (field 14)
            system += int(fields[12])  # stime (field 15)
        except (OSError, IndexError, ValueError):
            continue
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime, summed over a process tree."""
    return sum(cpu_times(pids))


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def background_load(sample: float = 0.5) -> float:
    """How busy the machine is without us (in cores) over `sample` seconds."""
    b0, t0 = system_busy_seconds(), time.monotonic()
    time.sleep(sample)
    return (system_busy_seconds() - b0) / (time.monotonic() - t0)


_quiet_budget = [90.0]  # seconds of waiting for a quiet machine left in this whole run


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (bounded per point and per run) until other work uses less than `limit` cores."""
    t0 = time.monotonic()
    deadline = t0 + min(max_wait, _quiet_budget[0])
    load = background_load()
    while load > limit and time.monotonic() < deadline:
        load = background_load()
    _quiet_budget[0] = max(0.0, _quiet_budget[0] - (time.monotonic() - t0))
    return load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def http_status(port: int, path: str) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
        return int(data.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def read_line(proc: subprocess.Popen[str], deadline: float) -> str | None:
    """One stdout line, or None at the deadline or EOF."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                line = proc.stdout.readline()
                return line.rstrip("\n") if line else None
            if proc.poll() is not None:
                return None
        return None
    finally:
        sel.close()


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def start_listening(
    cmd: list[str], logfile: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    with open(logfile, "a") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = read_line(proc, time.monotonic() + 20)
    if not line or not line.startswith("LISTENING "):
        stop(proc)
        raise RuntimeError(f"{cmd[1]} did not start: {line!r}; see {logfile}")
    return proc, int(line.split()[1])
