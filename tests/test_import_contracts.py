"""`policies/` stays a pure decision core: it imports only allowlisted standard-library modules.

An allowlist checked on the source, not a blocklist: a new module (`random`, `logging`,
`orjson`...) fails here until someone decides it is pure and adds it below. The layering and
independence contracts live in pyproject's `[tool.importlinter]` (run by `make lint`), with
a blocklist for `policies` kept there as a second net.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = "policies"

# Deterministic, no I/O, no clock, no randomness, no process-wide state. Left out on purpose:
# decimal (a process-wide mutable context; money is integer micro-USD, exact ratios are
# Fraction), hashlib/hmac/secrets/random/uuid (identity and randomness are the shell's),
# zoneinfo (reads the time-zone database from disk), time, os, sys, io, pathlib, logging,
# warnings, asyncio, threading, socket, importlib, inspect, pickle, and every third-party package.
ALLOWED_MODULES = frozenset(
    {
        "__future__",
        "abc",
        "base64",
        "bisect",
        "collections",
        "copy",
        "dataclasses",
        "datetime",  # only for arithmetic on given instants: the clock reads are refused below
        "enum",
        "fractions",
        "functools",
        "heapq",
        "itertools",
        "json",
        "math",
        "numbers",
        "operator",
        "re",
        "string",
        "struct",
        "types",
        "typing",
    }
)
# Builtins that do I/O or run code picked at run time.
FORBIDDEN_BUILTINS = frozenset({"open", "print", "input", "eval", "exec", "compile", "breakpoint", "__import__"})
# `datetime.now()`, `date.today()`...: the shell passes `now` in.
CLOCK_READS = frozenset({"now", "utcnow", "today"})
# Without a time zone these use the machine's local one: a result that depends on where it runs.
NEEDS_TZ = {"fromtimestamp": 2, "astimezone": 1}  # method -> positional arguments that include the tz


def impurities(source: str, module: str, is_package: bool = False) -> list[str]:
    """What in `source` (the module named `module`) breaks the core's purity, one line each."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{module}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {alias.name}" for alias in node.names if not _allowed(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, package)
            if target is None:
                found.append(f"{where} has a relative import that leaves {CORE}/")
            elif not _allowed(target):
                found.append(f"{where} imports from {target}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_BUILTINS:
            found.append(f"{where} uses {node.id}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in CLOCK_READS:
                found.append(f"{where} reads the clock (.{method}())")
            elif method in NEEDS_TZ and len(node.args) < NEEDS_TZ[method] and not node.keywords:
                found.append(f"{where} calls .{method}() without a time zone")
    return found


def _allowed(name: str) -> bool:
    top = name.partition(".")[0]
    return top == CORE or top in ALLOWED_MODULES


def _absolute(node: ast.ImportFrom, package: str) -> str | None:
    """The module a `from ... import` names, or None for a relative import above the core."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".") if package else []
    if node.level - 1 >= len(parts):
        return None
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def core_sources() -> list[tuple[str, bool, str]]:
    """(module name, is a package, source) for every file under policies/."""
    sources = []
    for path in sorted((ROOT / CORE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        sources.append((name, is_package, path.read_text(encoding="utf-8")))
    return sources


def test_policies_imports_only_allowlisted_standard_library_modules() -> None:
    sources = core_sources()
    assert len(sources) >= 10, "the walk found too few files to mean anything"
    found = [line for name, is_package, source in sources for line in impurities(source, name, is_package)]
    assert found == [], "policies/ must stay pure:\n" + "\n".join(found)


def test_the_allowlist_holds_only_standard_library_modules() -> None:
    assert ALLOWED_MODULES - sys.stdlib_module_names == set()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time", "imports time"),
        ("import os.path", "imports os.path"),
        ("import orjson", "imports orjson"),
        ("import math, random", "imports random"),
        ("from logging import getLogger", "imports from logging"),
        ("from gateway.settings import Settings", "imports from gateway.settings"),
        ("from emulator import app", "imports from emulator"),
        ("from .. import gateway", "relative import that leaves policies/"),
        ("from ...x import y", "relative import that leaves policies/"),
        ("import importlib\nimportlib.import_module('os')", "imports importlib"),
        ("__import__('socket')", "uses __import__"),
        ("loader = __import__", "uses __import__"),
        ("open('prices.yaml')", "uses open"),
        ("print('debug')", "uses print"),
        ("input()", "uses input"),
        ("eval('1')", "uses eval"),
        ("exec('x = 1')", "uses exec"),
        ("from datetime import datetime\nnow = datetime.now()", "reads the clock (.now())"),
        ("import datetime\nday = datetime.date.today()", "reads the clock (.today())"),
        ("from datetime import datetime\nd = datetime.fromtimestamp(0)", "calls .fromtimestamp() without a time zone"),
        ("def f(moment):\n    return moment.astimezone()", "calls .astimezone() without a time zone"),
    ],
)
def test_the_checker_catches_what_is_not_pure(source: str, expected: str) -> None:
    found = impurities(source, "policies.sample")
    assert len(found) == 1 and expected in found[0], found


def test_the_checker_accepts_pure_code_and_the_core_itself() -> None:
    source = """
from __future__ import annotations
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from . import pricing
from .pricing import PriceTable
from policies.budget import day_of
import policies.usage

def moment(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC).astimezone(UTC)
"""
    assert impurities(source, "policies.sample") == []
    assert impurities("from . import frames\nfrom .. import budget", "policies.sub", is_package=True) == []
