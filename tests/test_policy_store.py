"""Policy storage: the effective-policy rule, versioning, audit rows, change notifications, tiers files."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.livestate import LiveState, MemoryLiveState
from gateway.settings import AdminSettings, Settings, SettingsError
from gateway.storage.policy_store import PolicyStore, UnknownTier, audit, audit_entries
from gateway.storage.tenants import TenantNotFound
from gateway.tiers import PolicyFileError, load_tiers, read_policy_file
from policies.policy import UNRESTRICTED, BudgetPolicy, PolicyError, TenantPolicy, parse_policy
from tests.support.harness import make_tenant

GOLD = {"models": ["gpt-realtime-2"], "max_output_tokens": 4096, "budget": {"daily_usd": "12.5"}}


@pytest.fixture
def tiers() -> dict[str, Any]:
    return {**load_tiers(None), "gold": parse_policy(GOLD)}


@pytest.fixture
def store(pg_pool: asyncpg.Pool, tiers: dict[str, Any], redis_client: aioredis.Redis, redis_prefix: str) -> PolicyStore:
    return PolicyStore(pg_pool, tiers, "standard", LiveState(redis_client, redis_prefix))


async def test_a_new_tenant_gets_the_default_tier(store: PolicyStore, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    effective = await store.effective(tenant.tenant_id)
    assert effective == (store.tiers["standard"], None, "default")


async def test_without_the_default_tier_a_new_tenant_is_unrestricted(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    store = PolicyStore(pg_pool, {"gold": parse_policy(GOLD)}, "standard")
    assert await store.effective(tenant.tenant_id) == (UNRESTRICTED, None, "default")


async def test_an_assigned_tier_applies_until_the_tenant_has_its_own_policy(
    store: PolicyStore, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool)
    await store.set_tier(tenant.tenant_id, "gold", "alice")
    assert await store.effective(tenant.tenant_id) == (store.tiers["gold"], None, "tier")
    assert await store.tier_of(tenant.tenant_id) == "gold"

    # The tenant's own policy starts from the tier's: only the key it names changes.
    version = await store.set(tenant.tenant_id, {"max_output_tokens": 256}, "alice")
    policy, got_version, source = await store.effective(tenant.tenant_id)
    assert (got_version, source) == (version, "tenant") == (1, "tenant")
    assert policy == TenantPolicy(
        models=frozenset({"gpt-realtime-2"}), max_output_tokens=256, budget=BudgetPolicy(daily_micro_usd=12_500_000)
    )


async def test_a_change_keeps_every_limit_it_does_not_mention_and_null_removes_one(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    store = PolicyStore(pg_pool, {}, None)  # the first change starts from "unrestricted"
    await store.set(
        tenant.tenant_id,
        {
            "models": ["gpt-realtime"],
            "voices": ["marin"],
            "max_concurrent_sessions": 3,
            "session_starts_per_minute": 10,
            "redis_unavailable": "fail_open",
            "budget": {"daily_usd": "5", "monthly_usd": "100", "alert_at": [0.9], "at_limit": "cancel_response"},
        },
        "alice",
    )

    await store.set(tenant.tenant_id, {"max_output_tokens": 512, "budget": {"daily_usd": "7"}}, "bob")
    assert (await store.effective(tenant.tenant_id)).policy == TenantPolicy(
        models=frozenset({"gpt-realtime"}),
        voices=frozenset({"marin"}),
        max_output_tokens=512,
        max_concurrent_sessions=3,
        session_starts_per_minute=10,
        redis_unavailable="fail_open",
        budget=BudgetPolicy(
            daily_micro_usd=7_000_000, monthly_micro_usd=100_000_000, alert_at=(0.9,), at_limit="cancel_response"
        ),
    )

    await store.set(tenant.tenant_id, {"max_concurrent_sessions": None, "models": None, "budget": None}, "bob")
    assert (await store.effective(tenant.tenant_id)).policy == TenantPolicy(
        voices=frozenset({"marin"}),
        max_output_tokens=512,
        session_starts_per_minute=10,
        redis_unavailable="fail_open",
        budget=BudgetPolicy(alert_at=()),
    )
    # Every version is stored whole: history shows what was in force, not the change.
    latest = (await store.history(tenant.tenant_id))[0].document
    assert (latest["max_output_tokens"], latest["max_concurrent_sessions"]) == (512, None)


async def test_a_budget_set_where_there_was_none_gets_the_default_alerts(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    store = PolicyStore(pg_pool, {}, None)  # unrestricted: no budget, so no alerts either
    await store.set(tenant.tenant_id, {"budget": {"daily_usd": "2"}}, "alice")
    assert (await store.effective(tenant.tenant_id)).policy.budget == BudgetPolicy(
        daily_micro_usd=2_000_000, alert_at=(0.5, 0.8, 1.0)
    )


async def test_concurrent_changes_to_different_keys_all_stick(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    store = PolicyStore(pg_pool, {}, None)
    changes = [
        {"max_output_tokens": 100},
        {"max_concurrent_sessions": 4},
        {"session_starts_per_minute": 9},
        {"max_session_tokens": 5000},
        {"idle_timeout_seconds": 30},
    ]
    await asyncio.gather(*(store.set(tenant.tenant_id, change, "x") for change in changes))
    policy = (await store.effective(tenant.tenant_id)).policy
    assert (
        policy.max_output_tokens,
        policy.max_concurrent_sessions,
        policy.session_starts_per_minute,
        policy.max_session_tokens,
        policy.idle_timeout_seconds,
    ) == (100, 4, 9, 5000, 30.0)


async def test_a_tier_the_file_no_longer_defines_falls_back_to_the_default(
    store: PolicyStore, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool)
    await store.set_tier(tenant.tenant_id, "gold", "alice")
    without_gold = PolicyStore(pg_pool, {"standard": store.tiers["standard"]}, "standard")
    assert await without_gold.effective(tenant.tenant_id) == (store.tiers["standard"], None, "default")


async def test_policies_are_versioned_with_history_newest_first(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    store = PolicyStore(pg_pool, {}, None)  # unrestricted underneath: GOLD over it is exactly GOLD
    assert await store.history(tenant.tenant_id) == []
    assert await store.set(tenant.tenant_id, {"max_output_tokens": 100}, "alice") == 1
    assert await store.set(tenant.tenant_id, GOLD, "bob") == 2

    history = await store.history(tenant.tenant_id)
    assert [(v.version, v.created_by) for v in history] == [(2, "bob"), (1, "alice")]
    assert history[0].document["budget"]["daily_usd"] == "12.500000"
    assert parse_policy(history[0].document) == parse_policy(GOLD)
    assert (await store.effective(tenant.tenant_id)).version == 2


async def test_concurrent_sets_get_distinct_versions(store: PolicyStore, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    versions = await asyncio.gather(*(store.set(tenant.tenant_id, {"max_output_tokens": n}, "x") for n in range(1, 6)))
    assert sorted(versions) == [1, 2, 3, 4, 5]


async def test_every_change_writes_an_audit_row(store: PolicyStore, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    await store.set_tier(tenant.tenant_id, "gold", "alice")
    await store.set(tenant.tenant_id, {"max_output_tokens": 10}, "bob")
    await audit(pg_pool, "enforcer", tenant.tenant_id, "budget.alert", {"fraction": 0.8})

    entries = await audit_entries(pg_pool, tenant.tenant_id)
    assert [(e.actor, e.action) for e in entries] == [
        ("enforcer", "budget.alert"),
        ("bob", "policy.set"),
        ("alice", "tenant.tier"),
    ]
    assert entries[1].detail["version"] == 1
    assert entries[1].detail["document"]["max_output_tokens"] == 10
    assert entries[2].detail == {"tier": "gold", "previous": None}


async def test_an_invalid_document_names_the_key_and_stores_nothing(store: PolicyStore, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    with pytest.raises(PolicyError) as caught:
        await store.set(tenant.tenant_id, {"budget": {"daily_usd": "lots"}}, "alice")
    assert caught.value.key == "policy.budget.daily_usd"
    assert await store.history(tenant.tenant_id) == []
    assert await audit_entries(pg_pool, tenant.tenant_id) == []


async def test_unknown_tier_and_unknown_tenant(store: PolicyStore, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    with pytest.raises(UnknownTier, match="platinum"):
        await store.set_tier(tenant.tenant_id, "platinum", "alice")
    with pytest.raises(TenantNotFound):
        await store.effective("ten_missing")
    with pytest.raises(TenantNotFound):
        await store.set("ten_missing", {}, "alice")
    with pytest.raises(TenantNotFound):
        await store.set_tier("ten_missing", "gold", "alice")


async def test_changes_are_broadcast_to_every_replica(
    store: PolicyStore, pg_pool: asyncpg.Pool, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    tenant = await make_tenant(pg_pool)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"{redis_prefix}events")  # the live-state broadcast channel
    try:
        await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        await store.set(tenant.tenant_id, {"max_output_tokens": 5}, "alice")
        await store.set_tier(tenant.tenant_id, "gold", "alice")
        received = [await pubsub.get_message(ignore_subscribe_messages=True, timeout=5) for _ in range(2)]
    finally:
        await pubsub.aclose()
    messages = [json.loads(m["data"]) for m in received if m]
    assert [(m["kind"], m["tenant_id"]) for m in messages] == [("policy_changed", tenant.tenant_id)] * 2


async def test_a_redis_outage_does_not_fail_a_stored_change(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool)
    dead = aioredis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    try:
        store = PolicyStore(pg_pool, load_tiers(None), "standard", LiveState(dead))
        assert await store.set(tenant.tenant_id, {}, "alice") == 1
    finally:
        await dead.aclose()


async def test_without_shared_state_changes_reach_this_process(pg_pool: asyncpg.Pool) -> None:
    # The same code path as with Redis: the in-memory live state carries the broadcast.
    tenant = await make_tenant(pg_pool)
    live = MemoryLiveState(instance_id="here")
    store = PolicyStore(pg_pool, load_tiers(None), "standard", live)
    ready = asyncio.Event()
    received = live.subscribe(ready)
    first = asyncio.ensure_future(anext(received))
    await ready.wait()
    await store.set_tier(tenant.tenant_id, "standard", "alice")
    broadcast = await asyncio.wait_for(first, 5)
    await received.aclose()
    assert (broadcast.kind, broadcast.tenant_id, broadcast.origin_instance) == (
        "policy_changed",
        tenant.tenant_id,
        "here",
    )


# --- the tiers file ---------------------------------------------------------------------------------


def test_the_packaged_standard_tier_matches_the_issue() -> None:
    standard = load_tiers(None)["standard"]
    assert standard == parse_policy(
        {
            "models": ["gpt-realtime-2", "gpt-realtime-mini"],
            "voices": ["marin", "cedar"],
            "tools": [],
            "max_output_tokens": 1024,
            "max_session_tokens": 200000,
            "max_session_seconds": 900,
            "idle_timeout_seconds": 120,
            "max_concurrent_sessions": 20,
            "session_starts_per_minute": 60,
            "budget": {
                "daily_usd": 50,
                "monthly_usd": 1000,
                "alert_at": [0.5, 0.8, 1.0],
                "at_limit": "finish_response",
            },
        }
    )
    assert standard.budget.daily_micro_usd == 50_000_000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tiers:\n  gold:\n    max_output_tokns: 5\n", "tiers.gold.max_output_tokns"),
        ("tiers:\n  gold:\n    budget: {daily_usd: -1}\n", "tiers.gold.budget.daily_usd"),
        ("tiers:\n  gold:\n    budget: {at_limit: explode}\n", "tiers.gold.budget.at_limit"),
        ("tiers:\n  gold:\n    models: gpt-realtime\n", "tiers.gold.models"),
        ("tier:\n  gold: {}\n", "tiers"),
        ("tiers: {}\n", "tiers"),
    ],
)
def test_tiers_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError) as caught:
        load_tiers(path)
    assert caught.value.key == key
    assert key in str(caught.value)
    assert str(path) in str(caught.value)


def test_unreadable_and_non_yaml_tiers_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot be read"):
        load_tiers(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(PolicyFileError, match="not valid YAML"):
        load_tiers(bad)


def test_policy_files_are_validated_with_the_same_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("max_output_tokens: 512\nvoices: [marin]\n")
    assert read_policy_file(good) == {"max_output_tokens": 512, "voices": ["marin"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_output_tokens: 0\n")
    with pytest.raises(PolicyFileError) as caught:
        read_policy_file(bad)
    assert caught.value.key == "policy.max_output_tokens"


def test_the_gateway_refuses_to_start_with_a_bad_tiers_file(tmp_path: Path) -> None:
    path = tmp_path / f"tiers-{secrets.token_hex(2)}.yaml"
    path.write_text("tiers:\n  gold:\n    budget: {monthly_usd: 1.0000001}\n")
    settings = replace(Settings(), admin=AdminSettings(policy_file=path))
    with pytest.raises(SettingsError) as caught:
        create_app(settings)
    message = str(caught.value)
    assert "VOXGATE_POLICY_FILE" in message
    assert "tiers.gold.budget.monthly_usd" in message
    assert str(path) in message


def test_policy_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "VOXGATE_POLICY_FILE": str(tmp_path / "t.yaml"),
            "VOXGATE_DEFAULT_TIER": "gold",
            "VOXGATE_ADMIN_JWT_SECRET": "s" * 32,
            "VOXGATE_ADMIN_JWT_ISSUER": "https://idp",
            "VOXGATE_ADMIN_JWKS_URL": "https://idp/jwks",
            "VOXGATE_ADMIN_JWT_PUBLIC_KEY": "/etc/admin.pem",
        }
    )
    assert settings.admin == AdminSettings(
        jwt_secret="s" * 32,
        jwt_public_key="/etc/admin.pem",
        jwks_url="https://idp/jwks",
        jwt_audience="voxgate-admin",
        jwt_issuer="https://idp",
        policy_file=tmp_path / "t.yaml",
        default_tier="gold",
    )
    assert "s" * 32 not in repr(settings)
    assert Settings.from_env({}).admin == AdminSettings()


async def test_a_policy_stored_past_todays_bounds_still_loads_and_can_be_fixed(
    store: PolicyStore, pg_pool: asyncpg.Pool
) -> None:
    # A release that did not bound policy numbers stored this (found by a review of the bounds):
    # reading it must not fail, or the tenant could neither be admitted nor have its policy fixed.
    tenant = await make_tenant(pg_pool)
    document = json.dumps({"max_output_tokens": 2**64, "budget": {"daily_usd": "99999999999999999.000000"}})
    await pg_pool.execute(
        "INSERT INTO tenant_policies (tenant_id, version, document, created_by) VALUES ($1, 1, $2::jsonb, 'old')",
        tenant.tenant_id,
        document,
    )
    effective = await store.effective(tenant.tenant_id)
    assert (effective.source, effective.policy.max_output_tokens) == ("tenant", 2**31 - 1)
    version = await store.set(tenant.tenant_id, {"max_output_tokens": 4096}, actor="test")
    assert version == 2
    assert (await store.effective(tenant.tenant_id)).policy.max_output_tokens == 4096


async def test_a_change_over_a_tier_these_tiers_lack_is_refused_not_merged_over_the_default(
    tiers: dict[str, Any], pg_pool: asyncpg.Pool
) -> None:
    # Found by a review: `voxgate policy set` run without the gateway's VOXGATE_POLICY_FILE, for a
    # tenant on a tier of that file, stored the change merged over the packaged default (replacing the
    # tenant's allowlist) and exited 0 after a warning.
    tenant = await make_tenant(pg_pool)
    gateway_store = PolicyStore(pg_pool, tiers, "standard")
    await gateway_store.set_tier(tenant.tenant_id, "gold", actor="test")
    cli_store = PolicyStore(pg_pool, {"standard": tiers["standard"]}, "standard")  # no "gold" here
    with pytest.raises(UnknownTier):
        await cli_store.set(tenant.tenant_id, {"max_output_tokens": 100}, actor="test")
    assert await cli_store.history(tenant.tenant_id) == []
    assert (await gateway_store.effective(tenant.tenant_id)).source == "tier"
