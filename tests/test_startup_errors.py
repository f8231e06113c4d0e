"""`voxgate serve` refuses a bad start with one line on stderr and a non-zero exit within 10 s.

Every case runs the real `voxgate serve` as a subprocess with one thing wrong: a missing
variable, a bad tiers file, an unknown default tier, a busy port, a Postgres or Redis that
refuses or never answers, a database that is not migrated or was migrated by a newer voxgate
whose migrations contract the schema. A database migrated by a newer voxgate whose migrations only
expand it (a rollout or a `helm rollback`) is served, with one warning naming both versions.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import REDIS_URL
from tests.support.gateway_process import VOXGATE, delete_keys, free_port, gateway_process

REFUSAL_BOUND_S = 10.0  # the README's bound on a refused start
# For refusals that come before any connection: a DSN that would fail if it were ever dialled.
NEVER_DIALLED_DSN = "postgresql://postgres@127.0.0.1:1/never_dialled"
# The repository's migration files, read here by name (not through the runner under test).
MIGRATION_FILES = sorted((Path(__file__).parents[1] / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
NEWEST = int(MIGRATION_FILES[-1].name[:4])


@dataclass
class Outcome:
    returncode: int
    seconds: float
    stderr: str

    def refused_with(self, *fragments: str) -> str:
        """Assert a clean refusal (non-zero, in time, exactly one line, no traceback); return the line."""
        assert self.returncode != 0, self.stderr
        assert self.seconds < REFUSAL_BOUND_S, self.seconds
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        line = lines[0]
        assert line.startswith("voxgate serve: "), line
        for fragment in fragments:
            assert fragment in line, line
        return line


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that completes the TCP handshake (kernel backlog) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def serve_env(database_url: str | None, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update(
        {
            "VOXGATE_REDIS_URL": REDIS_URL,
            "VOXGATE_OPENAI_API_KEY": "sk-startup-test",
            "VOXGATE_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "VOXGATE_PORT": str(free_port()),
            "VOXGATE_REDIS_PREFIX": f"vgtest:{secrets.token_hex(4)}:",
        }
    )
    if database_url is not None:
        env["VOXGATE_DATABASE_URL"] = database_url
    env.update(overrides)
    return env


async def run_serve(env: dict[str, str], *args: str) -> Outcome:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        str(VOXGATE), "serve", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(REFUSAL_BOUND_S + 5):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Outcome(proc.returncode or 0, time.monotonic() - started, stderr.decode())


async def set_schema_version(dsn: str, version: int, *, expand_only: bool = True) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, expand_only) VALUES ($1, $2, $3, $4)",
            version,
            f"{version:04d}_from_a_newer_release.sql",
            "0" * 64,
            expand_only,
        )
    finally:
        await conn.close()


@pytest.fixture
async def migrated_dsn(empty_pg_dsn: str) -> str:
    """A fresh database at exactly the schema this build ships."""
    from gateway.storage.migrations import apply_migrations

    await apply_migrations(empty_pg_dsn)
    return empty_pg_dsn


@pytest.mark.parametrize("missing", ["VOXGATE_DATABASE_URL", "VOXGATE_REDIS_URL", "VOXGATE_OPENAI_API_KEY"])
async def test_a_missing_required_variable_is_named(missing: str) -> None:
    env = serve_env(NEVER_DIALLED_DSN)
    del env[missing]
    outcome = await run_serve(env)
    outcome.refused_with(missing, "missing required settings")
    assert outcome.returncode == 2


async def test_an_unreadable_tiers_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-such-tiers.yaml"
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_POLICY_FILE=str(path)))
    outcome.refused_with("VOXGATE_POLICY_FILE", str(path), "cannot be read")
    assert outcome.returncode == 2


async def test_an_invalid_tiers_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_text("tiers:\n  gold:\n    max_output_tokens: lots\n")
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_POLICY_FILE=str(path), VOXGATE_DEFAULT_TIER="gold"))
    outcome.refused_with("VOXGATE_POLICY_FILE", str(path), "tiers.gold.max_output_tokens")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00", "is not UTF-8 text"),  # was a UnicodeDecodeError traceback, exit 1
        (b"not: [valid\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
    ],
)
async def test_a_tiers_file_that_is_not_yaml_text_is_one_line(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_bytes(content)
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_POLICY_FILE=str(path)))
    outcome.refused_with("VOXGATE_POLICY_FILE", str(path), why)
    assert outcome.returncode == 2


@pytest.mark.parametrize(("env", "why"), [({"VOXGATE_PORT": "99999"}, "VOXGATE_PORT must be a TCP port (0-65535)")])
async def test_a_port_out_of_range_is_one_line(env: dict[str, str], why: str) -> None:
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, **env))  # was an OverflowError traceback from bind()
    outcome.refused_with(why)
    assert outcome.returncode == 2


async def test_a_default_tier_missing_from_the_tiers_file_is_refused_not_unlimited(tmp_path: Path) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_text("tiers:\n  gold:\n    max_output_tokens: 512\n  silver:\n    max_output_tokens: 256\n")
    outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_POLICY_FILE=str(path), VOXGATE_DEFAULT_TIER="glod"))
    outcome.refused_with("VOXGATE_DEFAULT_TIER", "'glod'", str(path), "gold, silver")
    assert outcome.returncode == 2


async def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        outcome = await run_serve(serve_env(NEVER_DIALLED_DSN, VOXGATE_PORT=str(port)))
    outcome.refused_with(f"127.0.0.1:{port}", "VOXGATE_PORT", "in use")


async def test_a_refused_database_connection_is_named_without_the_password() -> None:
    port = free_port()
    outcome = await run_serve(serve_env(f"postgresql://voxgate:hunter2-secret@127.0.0.1:{port}/voxgate"))
    line = outcome.refused_with("Postgres", f"127.0.0.1:{port}", "VOXGATE_DATABASE_URL", "refused")
    assert "hunter2-secret" not in line


async def test_an_unreachable_redis_is_named(migrated_dsn: str) -> None:
    port = free_port()
    outcome = await run_serve(serve_env(migrated_dsn, VOXGATE_REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0"))
    line = outcome.refused_with("Redis", f"127.0.0.1:{port}", "VOXGATE_REDIS_URL")
    assert "s3cret-pw" not in line


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
async def test_an_unreachable_redis_cluster_or_sentinel_is_named(migrated_dsn: str, scheme: str) -> None:
    port = free_port()
    url = f"{scheme}://:s3cret-pw@127.0.0.1:{port}" + ("/mymaster" if scheme == "redis+sentinel" else "")
    outcome = await run_serve(serve_env(migrated_dsn, VOXGATE_REDIS_URL=url))
    line = outcome.refused_with("Redis", f"127.0.0.1:{port}", "VOXGATE_REDIS_URL")
    assert "s3cret-pw" not in line


async def test_a_malformed_redis_topology_url_is_named(migrated_dsn: str) -> None:
    outcome = await run_serve(serve_env(migrated_dsn, VOXGATE_REDIS_URL="redis+sentinel://127.0.0.1:26379"))
    outcome.refused_with("VOXGATE_REDIS_URL", "not a valid Redis URL", "master's name")
    assert outcome.returncode == 2


async def test_a_redis_url_whose_database_is_not_a_number_is_refused(migrated_dsn: str) -> None:
    # redis-py took database 0 for `/abc` without a word: the state would land in another database.
    outcome = await run_serve(serve_env(migrated_dsn, VOXGATE_REDIS_URL="redis://127.0.0.1:6379/abc"))
    outcome.refused_with("VOXGATE_REDIS_URL", "must be a number, got 'abc'")
    assert outcome.returncode == 2


async def test_a_postgres_or_redis_that_never_answers_stops_the_start_in_time(migrated_dsn: str) -> None:
    with silent_listener() as pg_port, silent_listener() as redis_port:  # both at once: each waits its timeout
        postgres, redis = await asyncio.gather(
            run_serve(serve_env(f"postgresql://postgres@127.0.0.1:{pg_port}/voxgate")),
            run_serve(serve_env(migrated_dsn, VOXGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")),
        )
    postgres.refused_with("Postgres", f"127.0.0.1:{pg_port}", "did not answer within")
    redis.refused_with("Redis", f"127.0.0.1:{redis_port}", "did not answer within")


async def test_an_unmigrated_database_is_refused_with_the_command_to_run(empty_pg_dsn: str) -> None:
    outcome = await run_serve(serve_env(empty_pg_dsn))
    outcome.refused_with("schema is at version 0", "voxgate migrate")


async def test_a_database_one_migration_behind_is_refused(empty_pg_dsn: str, tmp_path: Path) -> None:
    from gateway.storage.migrations import apply_migrations

    older = tmp_path / "older"
    older.mkdir()
    for path in MIGRATION_FILES[:-1]:  # every file but the newest: the schema of the previous release
        (older / path.name).write_bytes(path.read_bytes())
    await apply_migrations(empty_pg_dsn, older)
    behind = int(MIGRATION_FILES[-2].name[:4])

    outcome = await run_serve(serve_env(empty_pg_dsn))
    outcome.refused_with(f"version {behind}", f"needs {NEWEST}", "voxgate migrate")


async def test_a_database_migrated_by_a_newer_voxgate_with_expand_only_migrations_is_served_with_a_warning(
    migrated_dsn: str, tmp_path: Path
) -> None:
    """A `helm rollback` (or old pods during a rollout) on a schema a newer release expanded."""
    await set_schema_version(migrated_dsn, NEWEST + 1)
    env = serve_env(migrated_dsn, VOXGATE_SHUTDOWN_GRACE_SECONDS="0")
    try:
        async with gateway_process(env, tmp_path, "rollback", int(env["VOXGATE_PORT"]), ready_seconds=20) as gateway:
            ready = await gateway.readyz()
            await gateway.stop_cleanly()
    finally:
        await delete_keys(REDIS_URL, env["VOXGATE_REDIS_PREFIX"])
    assert (ready["status"], ready["schema_version"]) == ("ready", NEWEST + 1)
    warnings = [line for line in gateway.log_path.read_text().splitlines() if "newer than this voxgate" in line]
    assert len(warnings) == 1, gateway.log_path.read_text()
    assert "WARNING" in warnings[0]
    assert f"version {NEWEST + 1}" in warnings[0] and f"knows ({NEWEST})" in warnings[0], warnings[0]
    assert "expand-only" in warnings[0]


async def test_a_database_migrated_by_a_newer_voxgate_with_a_contract_migration_is_refused(migrated_dsn: str) -> None:
    await set_schema_version(migrated_dsn, NEWEST + 1, expand_only=False)
    outcome = await run_serve(serve_env(migrated_dsn))
    line = outcome.refused_with(f"version {NEWEST + 1}", "newer than this voxgate", "upgrade voxgate")
    assert f"{NEWEST + 1:04d}_from_a_newer_release.sql" in line and "voxgate: contract" in line, line


async def test_serve_migrate_starts_on_an_empty_database_and_stops_on_sigterm(
    empty_pg_dsn: str, tmp_path: Path
) -> None:
    env = serve_env(empty_pg_dsn, VOXGATE_LOG_LEVEL="WARNING", VOXGATE_SHUTDOWN_GRACE_SECONDS="0")
    try:
        async with gateway_process(
            env, tmp_path, "serve-migrate", int(env["VOXGATE_PORT"]), args=["--migrate"], ready_seconds=20
        ) as gateway:
            ready = await gateway.readyz()
            await gateway.stop_cleanly()
    finally:
        await delete_keys(REDIS_URL, env["VOXGATE_REDIS_PREFIX"])
    assert ready["schema_version"] == NEWEST
