"""Issue 5 §2: `POST /v1/realtime/client_secrets` through a real gateway to the emulator."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from openai import AsyncOpenAI

from emulator import Faults
from gateway.storage.policy_store import PolicyStore
from tests.support.harness import UPSTREAM_KEY, TenantKey

pytestmark = pytest.mark.e2e

POLICY: dict[str, Any] = {
    "models": ["gpt-realtime", "gpt-realtime-mini"],
    "voices": ["marin", "cedar"],
    "tools": ["lookup_order"],
    "max_output_tokens": 300,
    "expires_after_max_seconds": 120,
}


async def set_policy(pool: asyncpg.Pool, tenant: TenantKey, **fields: Any) -> None:
    await PolicyStore(pool, {}, None).set(tenant.tenant_id, {**POLICY, **fields}, actor="test")


def sdk(gateway, tenant: TenantKey, **headers: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0, default_headers=headers)


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}"}


async def test_minted_secret_carries_the_clamped_config(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant)
    async with sdk(gateway, tenant, **{"X-Voxgate-End-User": "user-42"}) as client:
        secret = await client.realtime.client_secrets.create(
            session={
                "type": "realtime",
                "model": "gpt-realtime",
                "max_output_tokens": 4096,
                "audio": {"output": {"voice": "marin"}},
            },
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
    assert secret.value.startswith("ek_")
    minted = emulator.client_secrets[-1]
    assert minted.value == secret.value
    # What the emulator received: the ceiling and the policy's lifetime cap, nothing more.
    assert minted.request["session"]["max_output_tokens"] == 300
    assert minted.request["session"]["model"] == "gpt-realtime"
    assert minted.request["expires_after"] == {"anchor": "created_at", "seconds": 120}
    assert minted.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert minted.headers["openai-safety-identifier"].startswith("vg_")
    assert "user-42" not in minted.headers["openai-safety-identifier"]
    # Upstream's body comes back unchanged (the SDK parsed it into its own type).
    assert secret.session is not None
    assert secret.session.id == minted.session["id"]
    assert secret.session.max_output_tokens == 300
    await gateway.settle()
    row = await pg_pool.fetchrow(
        "SELECT s.transport, s.upstream_session_id, s.model, s.end_user_hash, m.tenant_id "
        "FROM realtime_sessions s JOIN minted_client_secrets m ON m.session_id = s.id "
        "WHERE m.upstream_session_id = $1",
        minted.session["id"],
    )
    assert row is not None
    assert row["transport"] == "client_secret"
    assert row["upstream_session_id"] == minted.session["id"]
    assert row["model"] == "gpt-realtime"
    assert row["tenant_id"] == tenant.tenant_id
    assert row["end_user_hash"] == minted.headers["openai-safety-identifier"]


async def test_defaults_are_filled_from_the_policy(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant, models=["gpt-realtime-mini"])
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{gateway.base_url}/realtime/client_secrets", json={}, headers=auth(tenant))
    assert response.status_code == 200, response.text
    sent = emulator.client_secrets[-1].request
    # The model admission checked is the one upstream runs; the ceiling is in force from the start.
    assert sent["session"] == {"type": "realtime", "model": "gpt-realtime-mini", "max_output_tokens": 300}
    assert sent["expires_after"]["seconds"] == 120  # upstream's default (600) is above the policy's cap
    assert response.json()["value"] == emulator.client_secrets[-1].value


async def test_shorter_lifetimes_and_lower_ceilings_are_kept(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant)
    async with sdk(gateway, tenant) as client:
        await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime-mini", "max_output_tokens": 50},
            expires_after={"anchor": "created_at", "seconds": 30},
        )
    sent = emulator.client_secrets[-1].request
    assert sent["session"]["max_output_tokens"] == 50
    assert sent["expires_after"]["seconds"] == 30


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"type": "realtime", "model": "gpt-4o-realtime-preview"}, "model_not_allowed", "session.model"),
        (
            {"type": "realtime", "audio": {"output": {"voice": "alloy"}}},
            "voice_not_allowed",
            "session.audio.output.voice",
        ),
        (
            {"type": "realtime", "tools": [{"type": "function", "name": "wire_money"}]},
            "tool_not_allowed",
            "session.tools[0].name",
        ),
    ],
)
async def test_policy_refusals_never_reach_upstream(gateway, emulator, tenant, pg_pool, session, code, param) -> None:
    await set_policy(pg_pool, tenant)
    before = len(emulator.client_secrets)
    async with sdk(gateway, tenant) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.realtime.client_secrets.create(session=session)
    assert caught.value.status_code == 403
    assert caught.value.code == code
    assert caught.value.param == param
    assert "policy" in caught.value.message
    assert len(emulator.client_secrets) == before


async def test_malformed_requests_are_400(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant)
    before = len(emulator.client_secrets)
    async with httpx.AsyncClient() as http:
        url = f"{gateway.base_url}/realtime/client_secrets"
        bad_tokens = await http.post(
            url, json={"session": {"type": "realtime", "max_output_tokens": "lots"}}, headers=auth(tenant)
        )
        not_json = await http.post(url, content=b"{nope", headers={**auth(tenant), "Content-Type": "application/json"})
        bad_expiry = await http.post(url, json={"expires_after": {"seconds": "soon"}}, headers=auth(tenant))
    assert bad_tokens.status_code == 400
    assert bad_tokens.json()["error"]["code"] == "invalid_value"
    assert bad_tokens.json()["error"]["param"] == "session.max_output_tokens"
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_json"
    assert bad_expiry.status_code == 400
    assert bad_expiry.json()["error"]["param"] == "expires_after.seconds"
    assert len(emulator.client_secrets) == before


async def test_upstream_errors_are_mapped(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant)
    async with httpx.AsyncClient() as http:
        url = f"{gateway.base_url}/realtime/client_secrets"
        # Upstream's own 400 (a lifetime below its minimum) reaches the client with its code.
        too_short = await http.post(
            url, json={"expires_after": {"anchor": "created_at", "seconds": 5}}, headers=auth(tenant)
        )
        emulator.faults = Faults(connect_status=429, retry_after_s=7)
        limited = await http.post(url, json={}, headers=auth(tenant))
        emulator.faults = Faults(connect_status=401)
        refused_key = await http.post(url, json={}, headers=auth(tenant))
        emulator.faults = Faults(connect_status=500)
        broken = await http.post(url, json={}, headers=auth(tenant))
    assert too_short.status_code == 400
    assert too_short.json()["error"]["param"] == "expires_after.seconds"
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert refused_key.status_code == 502  # voxgate's upstream key, not the tenant's: never a 401
    assert refused_key.json()["error"]["code"] == "upstream_auth_failed"
    assert broken.status_code == 503
    assert broken.json()["error"]["code"] == "upstream_unavailable"
    assert broken.headers["x-should-retry"] == "true"


async def test_only_tenant_keys_may_mint(gateway, emulator, tenant) -> None:
    async with httpx.AsyncClient() as http:
        url = f"{gateway.base_url}/realtime/client_secrets"
        missing = await http.post(url, json={})
        wrong = await http.post(url, json={}, headers={"Authorization": "Bearer vg_live_" + "x" * 43})
        browser = await http.post(url, json={}, headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_api_key")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
    assert (browser.status_code, browser.json()["error"]["code"]) == (403, "browser_token_not_allowed")


async def test_a_minted_secret_holds_no_concurrency_lease(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant, max_concurrent_sessions=1)
    async with sdk(gateway, tenant) as client:
        for _ in range(3):  # admission runs each time, and releases the lease right after
            await client.realtime.client_secrets.create(session={"type": "realtime"})
    state = gateway.services.enforcement.state
    assert await state.active_sessions(tenant.tenant_id, time.time()) == 0


async def test_budget_exhaustion_refuses_minting(gateway, emulator, tenant, pg_pool) -> None:
    await set_policy(pg_pool, tenant, budget={"daily_usd": "0"})
    before = len(emulator.client_secrets)
    async with sdk(gateway, tenant) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.realtime.client_secrets.create(session={"type": "realtime"})
    assert caught.value.code == "budget_exhausted"
    assert len(emulator.client_secrets) == before


async def test_a_transcription_secrets_budget_is_checked_at_the_default_models_price(
    gateway, emulator, tenant, pg_pool
) -> None:
    # A transcription session names no realtime model; admission checks its budget against
    # `default_model`: upstream's default "gpt-realtime" when the allowlist has it, even though
    # "gpt-4o-realtime-preview" sorts first (the rule `Enforcement.admit` used to apply alone).
    # By hand, one worst-case response (4096 output tokens, the models' maximum, no policy ceiling):
    # gpt-realtime 4096 x 64 USD/1M = 262_144 micro-USD fits a 0.30 USD day;
    # gpt-4o-realtime-preview 4096 x 80 USD/1M = 327_680 micro-USD does not.
    store = PolicyStore(pg_pool, {}, None)
    budget = {"daily_usd": "0.30"}
    await store.set(
        tenant.tenant_id, {"models": ["gpt-4o-realtime-preview", "gpt-realtime"], "budget": budget}, actor="test"
    )
    async with sdk(gateway, tenant) as client:
        minted = await client.realtime.client_secrets.create(session={"type": "transcription"})
    assert minted.value == emulator.client_secrets[-1].value
    assert emulator.client_secrets[-1].request["session"] == {"type": "transcription"}
    await store.set(tenant.tenant_id, {"models": ["gpt-4o-realtime-preview"], "budget": budget}, actor="test")
    before = len(emulator.client_secrets)
    async with sdk(gateway, tenant) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.realtime.client_secrets.create(session={"type": "transcription"})
    assert caught.value.code == "budget_exhausted"
    assert len(emulator.client_secrets) == before
