"""`voxgate tenant create --tier`, `voxgate policy show` and `voxgate policy set`, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from gateway import cli
from gateway.storage.policy_store import AuditEntry, audit_entries
from tests.conftest import REDIS_URL


@pytest.fixture
def voxgate(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VOXGATE_DATABASE_URL", pg_dsn)
    monkeypatch.delenv("VOXGATE_POLICY_FILE", raising=False)
    monkeypatch.delenv("VOXGATE_REDIS_URL", raising=False)
    monkeypatch.delenv("VOXGATE_DEFAULT_TIER", raising=False)
    return lambda *argv: cli.main(list(argv))


def run_json(voxgate: Any, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert voxgate(*argv, "--json") == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def audit_of(dsn: str, tenant_id: str) -> list[AuditEntry]:
    async def go() -> list[AuditEntry]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            return await audit_entries(pool, tenant_id)
        finally:
            await pool.close()

    return asyncio.run(go())


def test_policy_show_and_set_round_trip(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_dsn: str
) -> None:
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}", "--tier", "standard")
    assert tenant["tier"] == "standard"
    shown = run_json(voxgate, capsys, "policy", "show", tenant["id"])
    assert (shown["source"], shown["version"], shown["tier"]) == ("tier", None, "standard")
    assert shown["policy"]["max_output_tokens"] == 1024

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("models: [gpt-realtime-mini]\nmax_output_tokens: 256\nbudget: {daily_usd: 5}\n")
    assert run_json(voxgate, capsys, "policy", "set", tenant["id"], "--file", str(policy_file))["version"] == 1
    shown = run_json(voxgate, capsys, "policy", "show", tenant["id"])
    assert (shown["source"], shown["version"]) == ("tenant", 1)
    assert shown["policy"]["models"] == ["gpt-realtime-mini"]
    assert shown["policy"]["budget"]["daily_usd"] == "5.000000"

    # What `policy show --json` prints is itself a valid policy file: a round trip changes nothing.
    policy_file.write_text(json.dumps(shown["policy"]))
    assert run_json(voxgate, capsys, "policy", "set", tenant["id"], "--file", str(policy_file))["version"] == 2
    assert run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"] == shown["policy"]

    assert voxgate("policy", "show", tenant["id"]) == 0
    human = capsys.readouterr().out
    assert "version 2" in human
    assert "max_output_tokens: 256" in human

    actions = [(e.actor, e.action) for e in audit_of(pg_dsn, tenant["id"])]
    assert actions == [("cli", "policy.set"), ("cli", "policy.set"), ("cli", "tenant.create")]


def test_a_partial_policy_file_changes_only_the_keys_it_names(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The standard tier's limits survive a file that only raises the concurrency cap."""
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}", "--tier", "standard")
    partial = tmp_path / "partial.yaml"
    partial.write_text("max_concurrent_sessions: 40\nbudget: {daily_usd: 75}\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(partial)) == 0
    assert "over the policy in force" in capsys.readouterr().out
    policy = run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]
    # gateway/default_tiers.yaml's standard tier, with the two changes.
    assert policy == {
        "models": ["gpt-realtime-2", "gpt-realtime-mini"],
        "voices": ["cedar", "marin"],
        "tools": [],
        "max_output_tokens": 1024,
        "max_session_tokens": 200000,
        "max_session_seconds": 900.0,
        "idle_timeout_seconds": 120.0,
        "max_concurrent_sessions": 40,
        "max_concurrent_sessions_per_model": {},
        "session_starts_per_minute": 60,
        "budget": {
            "daily_usd": "75.000000",
            "monthly_usd": "1000.000000",
            "alert_at": [0.5, 0.8, 1.0],
            "at_limit": "finish_response",
        },
        "redis_unavailable": "fail_closed",
        "expires_after_max_seconds": 600,
    }

    # null removes a limit; everything else stays.
    partial.write_text("budget: {monthly_usd: null}\nmax_session_seconds: null\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(partial)) == 0
    capsys.readouterr()
    after = run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]
    assert after == {**policy, "max_session_seconds": None, "budget": {**policy["budget"], "monthly_usd": None}}


def test_an_invalid_policy_file_exits_2_naming_the_key(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget:\n  daily_usd: 10\n  alert_at: [2]\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(bad)) == 2
    err = capsys.readouterr().err
    assert "policy.budget.alert_at" in err
    assert str(bad) in err
    assert voxgate("policy", "set", tenant["id"], "--file", str(tmp_path / "missing.yaml")) == 2
    assert run_json(voxgate, capsys, "policy", "show", tenant["id"])["source"] == "default"


def test_per_model_concurrency_caps_are_set_shown_replaced_and_validated_by_the_cli(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    caps = tmp_path / "caps.yaml"
    caps.write_text("max_concurrent_sessions_per_model: {gpt-live-1: 5, gpt-realtime: 20}\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(caps)) == 0
    capsys.readouterr()
    shown = run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]
    assert shown["max_concurrent_sessions_per_model"] == {"gpt-live-1": 5, "gpt-realtime": 20}
    assert voxgate("policy", "show", tenant["id"]) == 0
    assert "gpt-live-1: 5" in capsys.readouterr().out
    # the map is replaced whole; null removes it
    caps.write_text("max_concurrent_sessions_per_model: {gpt-live-1: 2}\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(caps)) == 0
    capsys.readouterr()
    shown = run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]
    assert shown["max_concurrent_sessions_per_model"] == {"gpt-live-1": 2}
    caps.write_text("max_concurrent_sessions_per_model: {gpt-live-1: 0}\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(caps)) == 2
    assert "policy.max_concurrent_sessions_per_model.gpt-live-1" in capsys.readouterr().err
    caps.write_text("max_concurrent_sessions_per_model: null\n")
    assert voxgate("policy", "set", tenant["id"], "--file", str(caps)) == 0
    capsys.readouterr()
    assert (
        run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]["max_concurrent_sessions_per_model"] == {}
    )


def test_unknown_tier_and_unknown_tenant(voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert voxgate("tenant", "create", f"cli-{secrets.token_hex(4)}", "--tier", "platinum") == 2
    assert "platinum" in capsys.readouterr().err
    assert voxgate("policy", "show", "ten_missing") == 1
    good = tmp_path / "good.yaml"
    good.write_text("max_output_tokens: 5\n")
    assert voxgate("policy", "set", "ten_missing", "--file", str(good)) == 1


def test_a_custom_tiers_file_is_used_and_validated(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text("tiers:\n  gold:\n    max_output_tokens: 4096\n")
    monkeypatch.setenv("VOXGATE_POLICY_FILE", str(tiers))
    monkeypatch.setenv("VOXGATE_DEFAULT_TIER", "gold")  # the file has no `standard`, the default default
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}", "--tier", "gold")
    assert run_json(voxgate, capsys, "policy", "show", tenant["id"])["policy"]["max_output_tokens"] == 4096
    tiers.write_text("tiers:\n  gold:\n    max_output_tokens: many\n")
    assert voxgate("policy", "show", tenant["id"]) == 2
    assert "tiers.gold.max_output_tokens" in capsys.readouterr().err


def test_key_changes_from_the_cli_are_audited(voxgate: Any, capsys: pytest.CaptureFixture[str], pg_dsn: str) -> None:
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    key = run_json(voxgate, capsys, "key", "create", "--tenant", tenant["id"])
    assert voxgate("key", "revoke", key["id"]) == 0
    actions = [(e.actor, e.action, e.detail.get("key_id")) for e in audit_of(pg_dsn, tenant["id"])]
    assert actions == [
        ("cli", "key.revoke", key["id"]),
        ("cli", "key.create", key["id"]),
        ("cli", "tenant.create", None),
    ]


def test_policy_set_publishes_the_change_when_redis_is_configured(
    voxgate: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    monkeypatch.setenv("VOXGATE_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("VOXGATE_REDIS_PREFIX", prefix)
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text("max_output_tokens: 64\n")
    client = redis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(f"{prefix}events")  # the live-state broadcast channel
        pubsub.get_message(timeout=1)
        assert voxgate("policy", "set", tenant["id"], "--file", str(policy_file)) == 0
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    finally:
        pubsub.close()
        client.close()
    assert message is not None
    broadcast = json.loads(message["data"])
    assert (broadcast["kind"], broadcast["tenant_id"]) == ("policy_changed", tenant["id"])


def test_a_mistyped_default_tier_is_an_error_not_an_unrestricted_policy(
    voxgate: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = run_json(voxgate, capsys, "tenant", "create", f"cli-{secrets.token_hex(4)}")
    monkeypatch.setenv("VOXGATE_DEFAULT_TIER", "standrad")
    assert voxgate("policy", "show", tenant["id"], "--json") == 2
    err = capsys.readouterr().err
    assert "VOXGATE_DEFAULT_TIER" in err and "'standrad'" in err and "Traceback" not in err
    monkeypatch.setenv("VOXGATE_DEFAULT_TIER", "none")  # the explicit way to leave such tenants unrestricted
    assert run_json(voxgate, capsys, "policy", "show", tenant["id"])["source"] == "default"
