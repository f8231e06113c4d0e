"""`voxgate migrate | tenant | key | usage` against a real database, as an operator runs them.

The CLI runs its own event loop (`asyncio.run`), so these tests are plain functions and do
their own database setup through `asyncio.run` as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway import cli
from gateway.cli.output import format_usd
from gateway.cli.usage import parse_timestamp
from gateway.storage.tenants import KeyIdentity, TenantDirectory

Voxgate = Callable[..., int]
# The repository's migration files, by name: what `voxgate migrate` must apply to an empty database.
MIGRATION_FILES = sorted(p.name for p in (Path(__file__).parents[1] / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))


@pytest.fixture
def voxgate(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Voxgate:
    """Run `voxgate ARGS...` (the real command line, every group) against the test database."""
    monkeypatch.setenv("VOXGATE_DATABASE_URL", pg_dsn)
    return lambda *argv: cli.main(list(argv))


def run_json(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert voxgate(*argv, "--json") == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def authenticate(dsn: str, secret: str) -> KeyIdentity | None:
    async def go() -> KeyIdentity | None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            return await TenantDirectory(pool).authenticate(secret)
        finally:
            await pool.close()

    return asyncio.run(go())


def execute(dsn: str, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                for sql, params in statements:
                    await conn.execute(sql, *params)
        finally:
            await conn.close()

    asyncio.run(go())


def new_tenant(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    tenant: dict[str, Any] = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    return tenant


# --- configuration and errors ---------------------------------------------------------------


def test_missing_database_url_exits_2_with_a_hint(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOXGATE_DATABASE_URL")

    assert voxgate("tenant", "list") == 2

    err = capsys.readouterr().err
    assert "set VOXGATE_DATABASE_URL (or run `voxgate demo`)" in err
    assert "Traceback" not in err


def test_database_url_flag_overrides_the_environment(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    monkeypatch.setenv("VOXGATE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert voxgate("tenant", "list", "--database-url", pg_dsn) == 0

    assert voxgate("tenant", "list") == 1
    err = capsys.readouterr().err
    assert "cannot reach the database" in err
    assert "Traceback" not in err


def test_malformed_database_url_is_a_usage_error(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> None:
    assert voxgate("tenant", "list", "--database-url", "mysql://root:hunter2@db/app") == 2

    err = capsys.readouterr().err
    assert "invalid database URL" in err
    assert "hunter2" not in err


def test_unmigrated_database_points_at_migrate(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], empty_pg_dsn: str
) -> None:
    assert voxgate("tenant", "list", "--database-url", empty_pg_dsn) == 1
    assert "run `voxgate migrate`" in capsys.readouterr().err

    assert run_json(voxgate, capsys, "migrate", "--database-url", empty_pg_dsn) == {
        "applied": MIGRATION_FILES,
        "schema_version": int(MIGRATION_FILES[-1][:4]),
    }
    assert voxgate("migrate", "--database-url", empty_pg_dsn) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert voxgate("tenant", "list", "--database-url", empty_pg_dsn) == 0


# --- tenants --------------------------------------------------------------------------------


def test_tenant_create_and_list(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = new_tenant(voxgate, capsys)

    assert set(tenant) == {"id", "name", "created_at", "disabled_at"}
    assert tenant["id"].startswith("ten_")
    assert tenant["created_at"].endswith("Z")
    assert tenant["disabled_at"] is None
    assert tenant in run_json(voxgate, capsys, "tenant", "list")

    assert voxgate("tenant", "list") == 0
    assert tenant["id"] in capsys.readouterr().out


def test_duplicate_tenant_name_exits_1(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = new_tenant(voxgate, capsys)

    assert voxgate("tenant", "create", tenant["name"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err
    assert "Traceback" not in err


# --- keys -----------------------------------------------------------------------------------


def test_created_key_authenticates(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str) -> None:
    tenant = new_tenant(voxgate, capsys)

    key = run_json(voxgate, capsys, "key", "create", "--tenant", tenant["id"], "--name", "prod")

    assert set(key) == {"id", "tenant_id", "name", "prefix", "secret", "created_at"}
    assert (key["tenant_id"], key["name"], key["prefix"]) == (tenant["id"], "prod", key["secret"][:12])
    assert authenticate(pg_dsn, key["secret"]) == KeyIdentity(key["id"], tenant["id"], tenant["name"])

    [listed] = run_json(voxgate, capsys, "key", "list", "--tenant", tenant["id"])
    assert listed["id"] == key["id"]
    assert listed["status"] == "active"
    assert key["secret"] not in json.dumps(listed)


def test_human_key_create_warns_the_secret_is_shown_once(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str
) -> None:
    tenant = new_tenant(voxgate, capsys)

    assert voxgate("key", "create", "--tenant", tenant["id"]) == 0

    out = capsys.readouterr().out
    secret = next(word for word in out.split() if word.startswith("vg_live_"))
    assert "will not be shown again" in out
    assert authenticate(pg_dsn, secret) is not None
    assert voxgate("key", "list", "--tenant", tenant["id"]) == 0
    assert secret not in capsys.readouterr().out


def test_revoked_key_no_longer_authenticates(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str) -> None:
    tenant = new_tenant(voxgate, capsys)
    key = run_json(voxgate, capsys, "key", "create", "--tenant", tenant["id"])

    assert voxgate("key", "revoke", key["id"]) == 0
    assert capsys.readouterr().out == f"revoked key {key['id']}\n"
    assert authenticate(pg_dsn, key["secret"]) is None
    [listed] = run_json(voxgate, capsys, "key", "list", "--tenant", tenant["id"])
    assert listed["status"] == "revoked"
    assert listed["revoked_at"] is not None

    assert voxgate("key", "revoke", key["id"]) == 1
    assert "no active key" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [("key", "create"), ("key", "list"), ("usage",)])
def test_unknown_tenant_exits_1(voxgate: Voxgate, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    assert voxgate(*argv, "--tenant", "ten_nobody") == 1
    err = capsys.readouterr().err
    assert "no tenant with id 'ten_nobody'" in err
    assert "Traceback" not in err


# --- usage ----------------------------------------------------------------------------------

LEDGER_INSERT = """
INSERT INTO usage_ledger (
    response_id, session_id, tenant_id, model, status, occurred_at,
    input_tokens, output_tokens, total_tokens,
    input_text_tokens, input_audio_tokens, input_image_tokens,
    cached_text_tokens, cached_audio_tokens, cached_image_tokens,
    output_text_tokens, output_audio_tokens, cost_micro_usd, price_version)
VALUES ($1, $2, $3, 'gpt-realtime', $4, $5, $6::bigint, $7::bigint, $6 + $7, $6, 0, 0, 0, 0, 0, $7, 0, $8, 'test-1')
"""


def seed_usage(dsn: str, tenant_id: str) -> str:
    """One session, two responses and one transcription; returns the session id."""
    session_id = f"vgs_{secrets.token_hex(8)}"
    execute(
        dsn,
        [
            (
                "INSERT INTO realtime_sessions (id, tenant_id, transport, started_at) VALUES ($1, $2, 'websocket', $3)",
                (session_id, tenant_id, datetime(2025, 3, 1, 9, 59, tzinfo=UTC)),
            ),
            # Inserted out of order: the report must sort by time.
            (
                LEDGER_INSERT,
                (
                    f"resp_b_{session_id}",
                    session_id,
                    tenant_id,
                    "cancelled",
                    datetime(2025, 3, 1, 10, 5, tzinfo=UTC),
                    200,
                    30,
                    1_500_001,
                ),
            ),
            (
                LEDGER_INSERT,
                (
                    f"resp_a_{session_id}",
                    session_id,
                    tenant_id,
                    "completed",
                    datetime(2025, 3, 1, 10, 0, tzinfo=UTC),
                    1000,
                    250,
                    4_321,
                ),
            ),
            (
                "INSERT INTO transcription_usage (session_id, item_id, tenant_id, model, occurred_at, usage_type,"
                " input_audio_tokens, output_tokens, cost_micro_usd, price_version)"
                " VALUES ($1, 'item_1', $2, 'gpt-4o-transcribe', $3, 'tokens', 80, 12, 777, 'test-1')",
                (session_id, tenant_id, datetime(2025, 3, 1, 10, 1, tzinfo=UTC)),
            ),
        ],
    )
    return session_id


def test_usage_json_lists_responses_and_exact_totals(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str
) -> None:
    tenant = new_tenant(voxgate, capsys)
    session_id = seed_usage(pg_dsn, tenant["id"])

    report = run_json(voxgate, capsys, "usage", "--tenant", tenant["id"])

    assert [r["response_id"] for r in report["responses"]] == [f"resp_a_{session_id}", f"resp_b_{session_id}"]
    first = report["responses"][0]
    assert first == {
        "response_id": f"resp_a_{session_id}",
        "session_id": session_id,
        "occurred_at": "2025-03-01T10:00:00Z",
        "model": "gpt-realtime",
        "status": "completed",
        "input_tokens": 1000,
        "output_tokens": 250,
        "total_tokens": 1250,
        "input_text_tokens": 1000,
        "input_audio_tokens": 0,
        "input_image_tokens": 0,
        "cached_text_tokens": 0,
        "cached_audio_tokens": 0,
        "cached_image_tokens": 0,
        "output_text_tokens": 250,
        "output_audio_tokens": 0,
        "cost_micro_usd": 4321,
        "price_version": "test-1",
    }
    assert report["totals"] == {
        "responses": 2,
        "input_tokens": 1200,
        "output_tokens": 280,
        "cost_micro_usd": 1_504_322,
    }
    assert report["transcription"] == {
        "items": 1,
        "input_audio_tokens": 80,
        "input_text_tokens": 0,
        "output_tokens": 12,
        "duration_ms": 0,
        "cost_micro_usd": 777,
    }
    assert report["total_cost_micro_usd"] == 1_505_099
    assert report["since"] is None


def test_usage_since_filters_and_human_output_shows_dollars(
    voxgate: Voxgate, capsys: pytest.CaptureFixture[str], pg_dsn: str
) -> None:
    tenant = new_tenant(voxgate, capsys)
    session_id = seed_usage(pg_dsn, tenant["id"])

    report = run_json(voxgate, capsys, "usage", "--tenant", tenant["id"], "--since", "2025-03-01T10:01:00Z")
    assert [r["response_id"] for r in report["responses"]] == [f"resp_b_{session_id}"]
    assert report["totals"]["cost_micro_usd"] == 1_500_001
    assert report["transcription"]["cost_micro_usd"] == 777
    assert report["since"] == "2025-03-01T10:01:00Z"

    assert voxgate("usage", "--tenant", tenant["id"], "--since", "2025-03-01T11:01:00+01:00") == 0
    out = capsys.readouterr().out
    assert "$1.500001" in out
    assert "$0.004321" not in out
    assert "total cost: 1500778 micro-USD ($1.500778)" in out


def test_bad_since_is_a_usage_error(voxgate: Voxgate, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        voxgate("usage", "--tenant", "ten_x", "--since", "last tuesday")

    assert exited.value.code == 2
    assert "invalid ISO 8601 timestamp 'last tuesday'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("micro_usd", "shown"),
    [
        (0, "$0.000000"),
        (1, "$0.000001"),
        (999_999, "$0.999999"),
        (1_000_000, "$1.000000"),
        (123_456_789, "$123.456789"),
        (-2_500_000, "-$2.500000"),
    ],
)
def test_usd_formatting_is_exact(micro_usd: int, shown: str) -> None:
    assert format_usd(micro_usd) == shown


def test_naive_since_means_utc() -> None:
    assert parse_timestamp("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)


def test_only_a_missing_third_party_module_marks_a_command_dev_only() -> None:
    assert cli.import_dev_module("voxgate_no_such_dependency") == "voxgate_no_such_dependency"
    with pytest.raises(ModuleNotFoundError):  # a module of voxgate's own missing is a bug, never "install dev"
        cli.import_dev_module("gateway.no_such_module")
    assert "pip install 'voxgate[dev]'" in cli.needs_dev_extra("emulator", "aioice")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import __version__

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"voxgate {__version__}\n"


def test_a_reader_that_goes_away_is_not_reported_as_a_database_problem(pg_dsn: str) -> None:
    # Found by a review: `voxgate tenant list | head` answered "cannot reach the database: Broken pipe".
    voxgate_bin = Path(sys.executable).with_name("voxgate")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run(
        [str(voxgate_bin), "tenant", "list", "--database-url", pg_dsn],
        stdout=write,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert b"database" not in proc.stderr and b"Traceback" not in proc.stderr, proc.stderr
