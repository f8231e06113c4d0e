"""The admin REST API through a real gateway: every route, the role matrix, OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from gateway.alerts.signing import new_secret
from gateway.auth.browser import BrowserTokenVerifier
from gateway.auth.browser_keys import BrowserAuthStore
from gateway.errors import GatewayError
from gateway.settings import AdminSettings
from gateway.storage.policy_store import audit_entries
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token, claims, handmade, hs256
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway
from tests.support.webrtc_client import ClientPeer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def admin_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    settings = replace(
        settings,
        admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER),
        security=replace(settings.security, api_docs=True),
    )  # the OpenAPI document is opt-in
    gateway = await start_gateway(settings)
    yield gateway
    await gateway.stop()


@pytest.fixture
async def api(admin_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    base = f"{admin_gateway.server.http_url}/admin/v1"
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {admin_token()}"}) as client:
        yield client


def as_(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_openai_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param


async def new_tenant(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/tenants", json={"name": f"acme-{secrets.token_hex(4)}", **body})
    assert response.status_code == 201, response.text
    tenant: dict[str, Any] = response.json()
    return tenant


# --- routes, as an admin --------------------------------------------------------------------------


async def test_tenant_lifecycle(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api, tier="standard")
    assert tenant["status"] == "active"
    assert tenant["tier"] == "standard"
    assert tenant["id"].startswith("ten_")

    listed = (await api.get("/tenants")).json()
    assert listed["object"] == "list"
    assert tenant["id"] in [t["id"] for t in listed["data"]]
    assert (await api.get(f"/tenants/{tenant['id']}")).json() == tenant

    disabled = (await api.post(f"/tenants/{tenant['id']}/disable")).json()
    assert disabled["status"] == "disabled"
    assert disabled["disabled_at"]
    assert (await api.post(f"/tenants/{tenant['id']}/disable")).json()["status"] == "disabled"
    assert (await api.post(f"/tenants/{tenant['id']}/enable")).json()["status"] == "active"

    assert (await api.put(f"/tenants/{tenant['id']}/tier", json={"tier": None})).json()["tier"] is None


async def test_tenant_errors(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    assert_openai_error(await api.post("/tenants", json={"name": tenant["name"]}), 409, "tenant_exists", "name")
    assert_openai_error(await api.post("/tenants", json={"name": "  "}), 400, "invalid_tenant_name", "name")
    assert_openai_error(await api.post("/tenants", json={"name": "x", "tier": "platinum"}), 400, "unknown_tier", "tier")
    assert_openai_error(await api.post("/tenants", json={"nam": "x"}), 400, "invalid_request")
    assert_openai_error(await api.post("/tenants", content=b"{not json"), 400, "invalid_request")
    assert_openai_error(await api.get("/tenants/ten_missing"), 404, "tenant_not_found", "tenant_id")
    assert_openai_error(await api.post("/tenants/ten_missing/disable"), 404, "tenant_not_found")
    assert_openai_error(await api.put(f"/tenants/{tenant['id']}/tier", json={"tier": "x"}), 400, "unknown_tier")


async def test_keys_secret_shown_once_then_revoked(api: httpx.AsyncClient, admin_gateway: Gateway) -> None:
    tenant = await new_tenant(api)
    created = await api.post(f"/tenants/{tenant['id']}/keys", json={"name": "backend"})
    assert created.status_code == 201
    key = created.json()
    assert key["secret"].startswith("vg_live_")
    assert key["name"] == "backend"
    identity = await admin_gateway.services.tenants.authenticate(key["secret"])
    assert identity is not None
    assert identity.tenant_id == tenant["id"]

    unnamed = await api.post(f"/tenants/{tenant['id']}/keys")
    assert unnamed.status_code == 201
    assert unnamed.json()["name"] is None

    listed = (await api.get(f"/tenants/{tenant['id']}/keys")).json()["data"]
    assert [k["id"] for k in listed] == [key["id"], unnamed.json()["id"]]
    assert all("secret" not in k for k in listed)
    assert key["secret"] not in str(listed)

    revoked = await api.delete(f"/tenants/{tenant['id']}/keys/{key['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert await admin_gateway.services.tenants.authenticate(key["secret"]) is None
    assert_openai_error(await api.delete(f"/tenants/{tenant['id']}/keys/{key['id']}"), 404, "key_not_found", "key_id")

    other = await new_tenant(api)
    assert_openai_error(await api.delete(f"/tenants/{other['id']}/keys/{unnamed.json()['id']}"), 404, "key_not_found")
    assert_openai_error(await api.post("/tenants/ten_missing/keys"), 404, "tenant_not_found")


async def test_policy_versions_and_sources(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/policy"
    default = (await api.get(path)).json()
    assert (default["source"], default["version"], default["tier"]) == ("default", None, None)
    assert default["policy"]["max_output_tokens"] == 1024

    await api.put(f"/tenants/{tenant['id']}/tier", json={"tier": "standard"})
    assert (await api.get(path)).json()["source"] == "tier"

    first = await api.put(path, json={"max_output_tokens": 300, "budget": {"daily_usd": "2.5"}})
    assert first.status_code == 200, first.text
    assert (first.json()["source"], first.json()["version"]) == ("tenant", 1)
    assert first.json()["policy"]["budget"]["daily_usd"] == "2.500000"
    second = (await api.put(path, json={"models": ["gpt-realtime-mini"]})).json()
    assert second["version"] == 2
    # A change keeps the keys it does not name (docs/admin-api.md, "Changes merge").
    assert (second["policy"]["models"], second["policy"]["max_output_tokens"]) == (["gpt-realtime-mini"], 300)
    assert second["policy"]["budget"]["monthly_usd"] == "1000.000000"  # from the standard tier

    history = (await api.get(f"{path}/history")).json()
    assert [(v["version"], v["created_by"]) for v in history["data"]] == [(2, "alice"), (1, "alice")]
    assert history["data"][1]["policy"]["max_output_tokens"] == 300


async def test_invalid_policy_names_the_key(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/policy"
    response = await api.put(path, json={"budget": {"daily_usd": "1.0000001"}})
    assert_openai_error(response, 400, "invalid_policy", "policy.budget.daily_usd")
    typo = await api.put(path, json={"max_output_tokns": 1})
    assert_openai_error(typo, 400, "invalid_policy", "policy.max_output_tokns")
    assert_openai_error(await api.put(path, json=[1, 2]), 400, "invalid_request")
    # Past what a session can carry (a 64-bit integer in orjson, Redis and Postgres): refused here,
    # not stored to break every later session of the tenant with a 500 or a 1011 close.
    for key, value in [
        ("max_output_tokens", 2**64),
        ("max_session_tokens", 10**40),
        ("max_concurrent_sessions", 2**63),
        ("expires_after_max_seconds", 2**64),
        ("max_session_seconds", 10**400),
        ("max_concurrent_sessions_per_model", {"gpt-realtime-2": 2**64}),
    ]:
        response = await api.put(path, json={key: value})
        assert response.status_code == 400, (key, response.text)
        assert response.json()["error"]["code"] == "invalid_policy", (key, response.text)
        assert response.json()["error"]["param"].startswith(f"policy.{key}"), (key, response.text)
    huge_budget = await api.put(path, json={"budget": {"daily_usd": 10**13}})
    assert_openai_error(huge_budget, 400, "invalid_policy", "policy.budget.daily_usd")
    assert (await api.get(f"{path}/history")).json()["data"] == []
    assert_openai_error(await api.put("/tenants/ten_missing/policy", json={}), 404, "tenant_not_found")


async def test_usage_report(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    usage = (await api.get(f"/tenants/{tenant['id']}/usage", params={"since": "2026-01-01T00:00:00"})).json()
    assert usage["tenant_id"] == tenant["id"]
    assert usage["since"].startswith("2026-01-01T00:00:00")
    assert usage["responses"] == []
    assert usage["totals"] == {"responses": 0, "input_tokens": 0, "output_tokens": 0, "cost_micro_usd": 0}
    assert usage["total_cost_micro_usd"] == 0
    assert (await api.get(f"/tenants/{tenant['id']}/usage")).json()["since"] is None
    assert_openai_error(
        await api.get(f"/tenants/{tenant['id']}/usage", params={"since": "yesterday"}), 400, "invalid_request", "since"
    )


async def test_tiers_route(api: httpx.AsyncClient) -> None:
    tiers = (await api.get("/tiers")).json()
    assert tiers["default_tier"] == "standard"
    assert tiers["tiers"]["standard"]["models"] == ["gpt-realtime-2", "gpt-realtime-mini"]


async def test_every_mutation_is_audited_with_the_token_subject(
    api: httpx.AsyncClient, admin_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    headers = as_(admin_token(sub="carol@acme"))
    tenant = (await api.post("/tenants", json={"name": f"aud-{secrets.token_hex(4)}"}, headers=headers)).json()
    tid = tenant["id"]
    key = (await api.post(f"/tenants/{tid}/keys", headers=headers)).json()
    await api.delete(f"/tenants/{tid}/keys/{key['id']}", headers=headers)
    await api.put(f"/tenants/{tid}/policy", json={}, headers=headers)
    await api.put(f"/tenants/{tid}/tier", json={"tier": "standard"}, headers=headers)
    await api.post(f"/tenants/{tid}/disable", headers=headers)
    await api.post(f"/tenants/{tid}/enable", headers=headers)

    entries = await audit_entries(pg_pool, tid)
    assert [e.action for e in reversed(entries)] == [
        "tenant.create",
        "key.create",
        "key.revoke",
        "policy.set",
        "tenant.tier",
        "tenant.disable",
        "tenant.enable",
    ]
    assert {e.actor for e in entries} == {"carol@acme"}
    assert key["secret"] not in str([e.detail for e in entries])
    served = (await api.get(f"/tenants/{tid}/audit", params={"limit": 2})).json()["data"]
    assert [e["action"] for e in served] == ["tenant.enable", "tenant.disable"]


async def test_a_policy_change_is_published_for_live_sessions(api: httpx.AsyncClient, admin_gateway: Gateway) -> None:
    tenant = await new_tenant(api)
    client = aioredis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(f"{admin_gateway.settings.redis.key_prefix}events")  # live-state broadcasts
        await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        await api.put(f"/tenants/{tenant['id']}/policy", json={"max_output_tokens": 64})
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    finally:
        await pubsub.aclose()
        await client.aclose()
    assert message is not None
    broadcast = json.loads(message["data"])
    assert (broadcast["kind"], broadcast["tenant_id"]) == ("policy_changed", tenant["id"])


async def test_openapi_documents_every_admin_route(admin_gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=admin_gateway.server.http_url) as client:
        schema = (await client.get("/docs/openapi.json")).json()
    operations = {
        op["operationId"]: op
        for path, item in schema["paths"].items()
        if path.startswith("/admin/v1")
        for op in item.values()
    }
    assert set(operations) == {
        "admin_create_tenant",
        "admin_list_tenants",
        "admin_get_tenant",
        "admin_disable_tenant",
        "admin_enable_tenant",
        "admin_set_tenant_tier",
        "admin_list_keys",
        "admin_create_key",
        "admin_revoke_key",
        "admin_get_policy",
        "admin_set_policy",
        "admin_get_policy_history",
        "admin_get_usage",
        "admin_list_audit",
        "admin_list_tiers",
        "admin_get_browser_auth",
        "admin_set_browser_auth",
        "admin_delete_browser_auth",
        "admin_get_alert_webhook",
        "admin_set_alert_webhook",
        "admin_delete_alert_webhook",
        "admin_get_sip_routing",
        "admin_set_sip_routing",
        "admin_delete_sip_routing",
    }
    assert all(op["tags"] and op["security"] == [{"AdminJWT": []}] for op in operations.values())
    assert schema["components"]["securitySchemes"]["AdminJWT"]["scheme"] == "bearer"


# --- browser-token keys ---------------------------------------------------------------------------


KEY_ID = re.compile(r"hsk_[a-z2-7]{16}")


def names(key_id: str | None, secret: str) -> bool:
    """A key id as shown: random (`hsk_` + 80 bits), never derived from the secret it names."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return key_id is not None and KEY_ID.fullmatch(key_id) is not None and digest[:8] not in key_id


async def test_browser_keys_are_set_rotated_read_and_deleted_without_showing_the_secret(
    api: httpx.AsyncClient, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/browser-auth"
    first, second = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
    assert_openai_error(await api.get(path), 404, "browser_auth_not_configured", "tenant_id")

    created = await api.put(path, json={"hs256_secret": first, "audience": "acme-voice"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert (body["object"], body["tenant_id"], body["kinds"]) == ("browser_auth", tenant["id"], ["hs256"])
    assert names(body["hs256_key_id"], first)
    assert (body["jwks_url"], body["audience"]) == (None, "acme-voice")
    assert (await api.get(path)).json() == body

    rotated = (await api.put(path, json={"hs256_secret": second})).json()
    assert names(rotated["hs256_key_id"], second) and rotated["hs256_key_id"] != body["hs256_key_id"]
    assert rotated["audience"] == "voxgate"  # the whole config is replaced, like a policy version
    assert rotated["created_at"] == body["created_at"]
    assert rotated["updated_at"] >= body["updated_at"]

    both = (await api.put(path, json={"hs256_secret": second, "jwks_url": "https://idp.example/jwks.json"})).json()
    assert (both["kinds"], both["jwks_url"]) == (["hs256", "jwks"], "https://idp.example/jwks.json")
    assert both["hs256_key_id"] == rotated["hs256_key_id"]  # the same secret keeps its id
    only_jwks = (await api.put(path, json={"jwks_url": "https://idp.example/jwks.json"})).json()
    assert (only_jwks["kinds"], only_jwks["hs256_key_id"]) == (["jwks"], None)
    assert (
        await pg_pool.fetchval("SELECT hs256_secret FROM tenant_browser_auth WHERE tenant_id = $1", tenant["id"])
        is None
    )

    deleted = await api.delete(path)
    assert deleted.status_code == 200
    assert deleted.json() == {"tenant_id": tenant["id"], "deleted": True, "object": "browser_auth.deleted"}
    assert_openai_error(await api.get(path), 404, "browser_auth_not_configured")
    assert_openai_error(await api.delete(path), 404, "browser_auth_not_configured")

    entries = list(reversed(await audit_entries(pg_pool, tenant["id"])))
    changes = [(e.actor, e.action) for e in entries if e.action.startswith("browser_auth.")]
    assert changes == [("alice", "browser_auth.set")] * 4 + [("alice", "browser_auth.delete")]
    key_ids = [e.detail["hs256_key_id"] for e in entries if e.action == "browser_auth.set"]
    assert key_ids == [body["hs256_key_id"], rotated["hs256_key_id"], rotated["hs256_key_id"], None]
    assert not any("fingerprint" in key for e in entries for key in e.detail)
    served = (await api.get(f"/tenants/{tenant['id']}/audit")).text
    for secret in (first, second):
        assert secret not in str([e.detail for e in entries])
        assert secret not in served
        assert secret not in caplog.text


async def test_browser_keys_are_validated(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/browser-auth"
    short = "s" * 31
    too_short = await api.put(path, json={"hs256_secret": short})
    assert_openai_error(too_short, 400, "invalid_browser_auth", "hs256_secret")
    assert short not in too_short.text
    for url in ("http://idp.example/jwks.json", "ftp://idp.example/jwks.json", "https:///jwks.json", "jwks.json"):
        assert_openai_error(await api.put(path, json={"jwks_url": url}), 400, "invalid_browser_auth", "jwks_url")
    mixed = await api.put(path, json={"hs256_secret": secrets.token_urlsafe(40), "jwks_url": "http://idp.example/j"})
    assert_openai_error(mixed, 400, "invalid_browser_auth", "jwks_url")
    assert_openai_error(await api.put(path, json={}), 400, "invalid_browser_auth")
    assert_openai_error(
        await api.put(path, json={"jwks_url": "https://idp.example/j", "audience": ""}),
        400,
        "invalid_request",
        "audience",
    )
    assert_openai_error(await api.put(path, json={"secret": "x" * 40}), 400, "invalid_request")
    assert_openai_error(await api.get(path), 404, "browser_auth_not_configured")  # nothing invalid was stored
    # Loopback, private and metadata addresses only for a host in VOXGATE_JWKS_ALLOWED_HOSTS.
    loopback = await api.put(path, json={"jwks_url": "http://127.0.0.1:9/jwks.json"})
    assert_openai_error(loopback, 400, "invalid_browser_auth", "jwks_url")
    assert_openai_error(
        await api.put("/tenants/ten_missing/browser-auth", json={"jwks_url": "https://idp.example/j"}),
        404,
        "tenant_not_found",
    )


def browser_token(tenant_id: str, secret: str) -> str:
    now = int(time.time())
    claims = {"tenant_id": tenant_id, "sub": "user-1", "aud": "voxgate", "iat": now, "exp": now + 300}
    return jwt.encode(claims, secret, algorithm="HS256")


async def place_browser_call(gateway: Gateway, token: str) -> httpx.Response:
    """What a browser does: a raw SDP offer with its JWT (hung up again when accepted)."""
    peer = ClientPeer()
    try:
        async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
            response = await http.post("/v1/realtime/calls", content=await peer.offer(), headers=headers)
            if response.status_code == 201:
                await peer.accept(response.text)
                hangup = await http.post(f"{response.headers['location']}/hangup", headers=headers)
                assert hangup.status_code == 200, hangup.text
        return response
    finally:
        await peer.close()


async def test_after_rotation_old_browser_tokens_stay_valid_for_the_default_window(
    api: httpx.AsyncClient, admin_gateway: Gateway, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant, path, old_secret, new_secret, old_token = await rotating_tenant(api, pg_pool)
    assert (await place_browser_call(admin_gateway, old_token)).status_code == 201  # and its keys are now cached

    old_id = (await api.get(path)).json()["hs256_key_id"]
    rotated = await api.put(path, json={"hs256_secret": new_secret})
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert names(body["hs256_key_id"], new_secret) and body["hs256_key_id"] != old_id
    assert body["previous_hs256_key_id"] == old_id
    db_now = await pg_pool.fetchval("SELECT now()")
    window = datetime.fromisoformat(body["previous_valid_until"]) - db_now
    assert 895 <= window.total_seconds() <= 900  # the longest a browser token lives, by the database clock
    assert (await api.get(path)).json() == body

    # Tokens already signed with the old secret keep working; new ones work too.
    accepted_old = await place_browser_call(admin_gateway, old_token)
    assert accepted_old.status_code == 201, accepted_old.text
    assert (await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, old_secret))).status_code == 201
    accepted_new = await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, new_secret))
    assert accepted_new.status_code == 201, accepted_new.text
    assert_openai_error(
        await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, "x" * 40)), 401, "invalid_token"
    )

    rotation = next(e for e in await audit_entries(pg_pool, tenant.tenant_id) if e.action == "browser_auth.set")
    assert (rotation.detail["hs256_key_id"], rotation.detail["previous_hs256_key_id"]) == (body["hs256_key_id"], old_id)
    assert datetime.fromisoformat(rotation.detail["previous_valid_until"]) == datetime.fromisoformat(
        body["previous_valid_until"]
    )

    # Deleting the keys removes the previous secret too.
    assert (await api.delete(path)).status_code == 200
    for secret in (old_secret, new_secret):
        assert_openai_error(
            await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, secret)), 401, "invalid_token"
        )
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM tenant_browser_auth WHERE tenant_id = $1", tenant.tenant_id) == 0
    )
    served = (await api.get(f"/tenants/{tenant.tenant_id}/audit")).text
    stored_audit = str([e.detail for e in await audit_entries(pg_pool, tenant.tenant_id)])
    for text in (served, stored_audit, caplog.text, rotated.text):
        assert old_secret not in text
        assert new_secret not in text


async def rotating_tenant(api: httpx.AsyncClient, pg_pool: asyncpg.Pool) -> tuple[Any, str, str, str, str]:
    """A tenant with an HS256 browser key: (tenant, its browser-auth path, old and new secrets, an old-key token)."""
    tenant = await make_tenant(pg_pool, prefix="web")
    path = f"/tenants/{tenant.tenant_id}/browser-auth"
    old_secret, new_secret = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
    assert (await api.put(path, json={"hs256_secret": old_secret})).status_code == 200
    return tenant, path, old_secret, new_secret, browser_token(tenant.tenant_id, old_secret)


async def test_a_hard_cut_over_refuses_old_browser_tokens_at_once(
    api: httpx.AsyncClient, admin_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    tenant, path, _, new_secret, old_token = await rotating_tenant(api, pg_pool)
    assert (await place_browser_call(admin_gateway, old_token)).status_code == 201  # and its keys are now cached

    rotated = (await api.put(path, json={"hs256_secret": new_secret, "previous_valid_seconds": 0})).json()
    assert (rotated["previous_hs256_key_id"], rotated["previous_valid_until"]) == (None, None)
    refused = await place_browser_call(admin_gateway, old_token)
    assert_openai_error(refused, 401, "invalid_token")
    assert old_token not in refused.text
    accepted = await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, new_secret))
    assert accepted.status_code == 201, accepted.text
    assert (
        await pg_pool.fetchval(
            "SELECT hs256_previous_secret FROM tenant_browser_auth WHERE tenant_id = $1", tenant.tenant_id
        )
        is None
    )


async def test_old_browser_tokens_are_refused_once_the_window_has_passed(
    api: httpx.AsyncClient, admin_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    tenant, path, old_secret, new_secret, old_token = await rotating_tenant(api, pg_pool)

    old_id = (await api.get(path)).json()["hs256_key_id"]
    rotated = (await api.put(path, json={"hs256_secret": new_secret, "previous_valid_seconds": 3})).json()
    assert names(old_id, old_secret) and rotated["previous_hs256_key_id"] == old_id
    assert (await place_browser_call(admin_gateway, old_token)).status_code == 201  # the config is now cached
    left = datetime.fromisoformat(rotated["previous_valid_until"]) - await pg_pool.fetchval("SELECT now()")
    await asyncio.sleep(left.total_seconds() + 0.2)
    # Within the replica's 10 s config cache, yet the window is closed: the cache never stretches it.
    assert_openai_error(await place_browser_call(admin_gateway, old_token), 401, "invalid_token")
    assert (await place_browser_call(admin_gateway, browser_token(tenant.tenant_id, new_secret))).status_code == 201
    after = (await api.get(path)).json()
    assert (after["hs256_key_id"], after["previous_hs256_key_id"], after["previous_valid_until"]) == (
        rotated["hs256_key_id"],
        None,
        None,
    )


async def test_setting_the_same_secret_again_never_overlaps_with_itself(
    api: httpx.AsyncClient, pg_pool: asyncpg.Pool
) -> None:
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/browser-auth"
    first, second = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
    set_once = (await api.put(path, json={"hs256_secret": first})).json()
    set_twice = (await api.put(path, json={"hs256_secret": first})).json()
    assert (set_once["previous_hs256_key_id"], set_twice["previous_hs256_key_id"]) == (None, None)
    first_id = set_twice["hs256_key_id"]
    assert names(first_id, first) and set_once["hs256_key_id"] == first_id

    rotated = (await api.put(path, json={"hs256_secret": second})).json()
    assert rotated["previous_hs256_key_id"] == first_id
    # The same secret again (a retry, a new audience) keeps the open window as it was.
    again = (await api.put(path, json={"hs256_secret": second, "audience": "acme"})).json()
    assert (again["previous_hs256_key_id"], again["previous_valid_until"], again["audience"]) == (
        first_id,
        rotated["previous_valid_until"],
        "acme",
    )
    # Given with an unchanged secret, the window can only shrink: 0 closes it at once.
    shortened = (await api.put(path, json={"hs256_secret": second, "previous_valid_seconds": 60})).json()
    assert shortened["previous_hs256_key_id"] == first_id
    assert datetime.fromisoformat(shortened["previous_valid_until"]) < datetime.fromisoformat(
        rotated["previous_valid_until"]
    )
    longer = (await api.put(path, json={"hs256_secret": second, "previous_valid_seconds": 3600})).json()
    assert longer["previous_valid_until"] == shortened["previous_valid_until"]
    closed = (await api.put(path, json={"hs256_secret": second, "previous_valid_seconds": 0})).json()
    assert (closed["previous_hs256_key_id"], closed["previous_valid_until"]) == (None, None)

    # Rolling back to the first secret: the second becomes the previous one, never the first itself.
    assert (await api.put(path, json={"hs256_secret": second})).json()["previous_hs256_key_id"] is None
    back = (await api.put(path, json={"hs256_secret": first})).json()
    # The first secret was no longer stored, so it comes back under a new id; the second keeps its own.
    assert names(back["hs256_key_id"], first) and back["hs256_key_id"] != first_id
    assert back["previous_hs256_key_id"] == rotated["hs256_key_id"]
    assert (
        await pg_pool.fetchval(
            "SELECT hs256_previous_secret FROM tenant_browser_auth WHERE tenant_id = $1", tenant["id"]
        )
        == second
    )


async def test_switching_to_jwks_keeps_the_old_secret_for_the_window(
    api: httpx.AsyncClient, admin_gateway: Gateway, pg_pool: asyncpg.Pool
) -> None:
    tenant = await make_tenant(pg_pool, prefix="web")
    path = f"/tenants/{tenant.tenant_id}/browser-auth"
    old_secret = secrets.token_urlsafe(40)
    old_id = (await api.put(path, json={"hs256_secret": old_secret})).json()["hs256_key_id"]
    old_token = browser_token(tenant.tenant_id, old_secret)

    switched = (await api.put(path, json={"jwks_url": "https://idp.example/jwks.json"})).json()
    assert (switched["kinds"], switched["hs256_key_id"]) == (["jwks"], None)
    assert names(old_id, old_secret) and switched["previous_hs256_key_id"] == old_id
    accepted = await place_browser_call(admin_gateway, old_token)
    assert accepted.status_code == 201, accepted.text

    # Past the window (set in the database), the old secret is refused: GET and a fresh verifier agree.
    await pg_pool.execute(
        "UPDATE tenant_browser_auth SET hs256_previous_until = now() - interval '1 second' WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    expired = (await api.get(path)).json()
    assert (expired["previous_hs256_key_id"], expired["previous_valid_until"]) == (None, None)
    with pytest.raises(GatewayError) as refused:
        await BrowserTokenVerifier(BrowserAuthStore(pg_pool)).verify(old_token)
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")
    # Setting the keys again drops the expired secret from the row too.
    assert (await api.put(path, json={"jwks_url": "https://idp.example/jwks.json"})).status_code == 200
    assert (
        await pg_pool.fetchval(
            "SELECT hs256_previous_secret FROM tenant_browser_auth WHERE tenant_id = $1", tenant.tenant_id
        )
        is None
    )


async def test_the_overlap_window_is_validated(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    path = f"/tenants/{tenant['id']}/browser-auth"
    secret = secrets.token_urlsafe(40)
    for window in (-1, 3601, "soon", 1.5, True):
        response = await api.put(path, json={"hs256_secret": secret, "previous_valid_seconds": window})
        assert_openai_error(response, 400, "invalid_request", "previous_valid_seconds")
        assert secret not in response.text
    assert_openai_error(await api.get(path), 404, "browser_auth_not_configured")  # nothing invalid was stored
    for window in (0, 3600):
        assert (await api.put(path, json={"hs256_secret": secret, "previous_valid_seconds": window})).status_code == 200


async def test_a_tenant_admin_rotates_its_own_browser_keys_only(api: httpx.AsyncClient, pg_pool: asyncpg.Pool) -> None:
    own, other = await make_tenant(pg_pool, prefix="own"), await make_tenant(pg_pool, prefix="other")
    headers = as_(hs256(claims(sub="dev@tenant", roles=["tenant_admin"], tenant_id=own.tenant_id)))
    body = {"hs256_secret": secrets.token_urlsafe(40)}
    assert (await api.put(f"/tenants/{own.tenant_id}/browser-auth", json=body, headers=headers)).status_code == 200
    assert_openai_error(
        await api.put(f"/tenants/{other.tenant_id}/browser-auth", json=body, headers=headers), 404, "tenant_not_found"
    )
    actions = [(e.actor, e.action) for e in await audit_entries(pg_pool, own.tenant_id)]
    assert actions == [("dev@tenant", "browser_auth.set")]
    assert await audit_entries(pg_pool, other.tenant_id) == []


# --- authentication over HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        hs256(claims(roles=["admin"]), secret="y" * 48),  # forged
        hs256(claims(roles=["admin"], exp=1_000_000)),  # expired
        hs256(claims(roles=["admin"], aud="other")),  # wrong audience
        hs256(claims(roles=["admin"], iss="https://evil.test")),  # wrong issuer
        handmade({"alg": "none"}, claims(roles=["admin"]), None),  # alg none
        hs256(claims(sub=None, roles=["admin"])),  # missing sub
    ],
    ids=["forged", "expired", "wrong-audience", "wrong-issuer", "alg-none", "missing-sub"],
)
async def test_bad_tokens_get_a_401_that_never_echoes_them(api: httpx.AsyncClient, token: str) -> None:
    response = await api.get("/tenants", headers=as_(token))
    assert_openai_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert token not in response.text


async def test_no_token_is_a_401(admin_gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=f"{admin_gateway.server.http_url}/admin/v1") as client:
        assert_openai_error(await client.get("/tenants"), 401, "invalid_token")
        assert_openai_error(await client.get("/tenants", headers={"authorization": "Basic x"}), 401, "invalid_token")


# --- the role matrix ------------------------------------------------------------------------------


ROUTES = [
    ("GET", "/tenants"),
    ("POST", "/tenants"),
    ("GET", "/tenants/{t}"),
    ("POST", "/tenants/{t}/disable"),
    ("POST", "/tenants/{t}/enable"),
    ("PUT", "/tenants/{t}/tier"),
    ("GET", "/tenants/{t}/keys"),
    ("POST", "/tenants/{t}/keys"),
    ("GET", "/tenants/{t}/policy"),
    ("PUT", "/tenants/{t}/policy"),
    ("GET", "/tenants/{t}/policy/history"),
    ("GET", "/tenants/{t}/usage"),
    ("GET", "/tenants/{t}/audit"),
    ("GET", "/tiers"),
    # set first, so that reading and deleting find something
    ("PUT", "/tenants/{t}/browser-auth"),
    ("GET", "/tenants/{t}/browser-auth"),
    ("DELETE", "/tenants/{t}/browser-auth"),
    # every tenant of the test has a webhook set beforehand, so that reading finds one
    ("GET", "/tenants/{t}/alert-webhook"),
    ("PUT", "/tenants/{t}/alert-webhook"),
    ("DELETE", "/tenants/{t}/alert-webhook"),
    # SIP routing (docs/admin-api.md): set first, so that deleting finds something
    ("PUT", "/tenants/{t}/sip"),
    ("GET", "/tenants/{t}/sip"),
    ("DELETE", "/tenants/{t}/sip"),
]
BROWSER_AUTH_ROUTES = {
    "PUT /tenants/{t}/browser-auth",
    "GET /tenants/{t}/browser-auth",
    "DELETE /tenants/{t}/browser-auth",
}
# Finance reads what money views need (tenants, budgets in policies, usage, the audit trail with its
# budget events, tiers, where alerts go) and changes nothing; no keys, no browser-token keys.
FINANCE_READS = {
    "GET /tenants",
    "GET /tenants/{t}",
    "GET /tenants/{t}/policy",
    "GET /tenants/{t}/policy/history",
    "GET /tenants/{t}/usage",
    "GET /tenants/{t}/audit",
    "GET /tiers",
    "GET /tenants/{t}/alert-webhook",
    "GET /tenants/{t}/sip",
}
ALLOWED = {
    "admin": {f"{m} {p}" for m, p in ROUTES},
    "finance": FINANCE_READS,
    "finance (tenant_id)": FINANCE_READS,
    # Browser-token keys are the tenant's credentials, like its API keys: its tenant_admin manages them.
    "tenant_admin": {
        "GET /tenants",
        "GET /tenants/{t}",
        "GET /tenants/{t}/keys",
        "POST /tenants/{t}/keys",
        "GET /tenants/{t}/policy",
        "GET /tenants/{t}/policy/history",
        "GET /tenants/{t}/usage",
        "GET /tiers",
        "GET /tenants/{t}/alert-webhook",
        "GET /tenants/{t}/sip",  # which numbers ring the tenant and where they are announced
        *BROWSER_AUTH_ROUTES,
    },
    "viewer": set(),
}
# Which roles reach only the tenant of the token's tenant_id claim.
SCOPED = {"finance (tenant_id)", "tenant_admin"}
BODIES = {
    "POST /tenants": {"name": "n"},
    "PUT /tenants/{t}/tier": {"tier": "standard"},
    "PUT /tenants/{t}/policy": {},
    "PUT /tenants/{t}/browser-auth": {"hs256_secret": secrets.token_urlsafe(40)},
    "PUT /tenants/{t}/alert-webhook": {"url": "https://hooks.example.test/voxgate", "secret": new_secret()},
    "PUT /tenants/{t}/sip": {
        "numbers": [f"+1800{secrets.randbelow(10**7):07d}"],
        "webhook_url": "https://hooks.example.test/sip",
        "webhook_secret": new_secret(),
    },
}


def role_token(role: str, tenant_id: str) -> str:
    """`finance` carries no tenant_id claim; every other role does (ignored by admin, required by tenant_admin)."""
    name = role.split(" ")[0]
    extra = {} if role == "finance" else {"tenant_id": tenant_id}
    return hs256(claims(sub=f"{name}-user", roles=[name], **extra))


@pytest.mark.parametrize("role", sorted(ALLOWED))
async def test_role_matrix(api: httpx.AsyncClient, pg_pool: asyncpg.Pool, role: str) -> None:
    own = await make_tenant(pg_pool, prefix="own")
    other = await make_tenant(pg_pool, prefix="other")
    for tenant in (own, other):
        webhook = BODIES["PUT /tenants/{t}/alert-webhook"]
        assert (await api.put(f"/tenants/{tenant.tenant_id}/alert-webhook", json=webhook)).status_code == 200
    token = role_token(role, own.tenant_id)
    for method, template in ROUTES:
        route = f"{method} {template}"
        body = {**BODIES[route], "name": f"m-{secrets.token_hex(4)}"} if route == "POST /tenants" else BODIES.get(route)
        response = await api.request(method, template.format(t=own.tenant_id), json=body, headers=as_(token))
        if route in ALLOWED[role]:
            assert response.status_code in (200, 201), (role, route, response.text)
        else:
            assert_openai_error(response, 403, "insufficient_role")
        if "{t}" not in template:
            continue
        elsewhere = await api.request(method, template.format(t=other.tenant_id), json=body, headers=as_(token))
        if role in SCOPED:
            # Another tenant is invisible to a scoped token: 404, exactly as if it did not exist.
            expected = 404 if route in ALLOWED[role] else 403
            assert elsewhere.status_code == expected, (role, route, elsewhere.text)
            missing = await api.request(method, template.format(t="ten_missing"), json=body, headers=as_(token))
            assert missing.status_code == expected
            if expected == 404:
                assert elsewhere.json() == {
                    **missing.json(),
                    "error": {**missing.json()["error"], "message": elsewhere.json()["error"]["message"]},
                }
            else:
                assert_openai_error(elsewhere, 403, "insufficient_role")
        elif route in FINANCE_READS:  # an unscoped role reads every tenant alike
            expected = 200 if route in ALLOWED[role] else 403
            assert elsewhere.status_code == expected, (role, route, elsewhere.text)
        elif route not in ALLOWED[role]:
            assert_openai_error(elsewhere, 403, "insufficient_role")
    # Nothing a refused request named was changed: the other tenant's audit trail holds only the admin's setup.
    if role != "admin":
        actions = [e.action for e in await audit_entries(pg_pool, other.tenant_id)]
        assert actions == ["alert_webhook.set"], (role, actions)


@pytest.mark.parametrize("role", ["finance", "finance (tenant_id)", "tenant_admin", "admin"])
async def test_tenant_lists_are_filtered_to_a_scoped_token(
    api: httpx.AsyncClient, pg_pool: asyncpg.Pool, role: str
) -> None:
    own = await make_tenant(pg_pool, prefix="own")
    other = await make_tenant(pg_pool, prefix="other")
    listed = {t["id"] for t in (await api.get("/tenants", headers=as_(role_token(role, own.tenant_id)))).json()["data"]}
    if role in SCOPED:
        assert listed == {own.tenant_id}
    else:
        assert {own.tenant_id, other.tenant_id} <= listed


@pytest.mark.parametrize(
    "token",
    [
        hs256(claims(roles=["finance"]), secret="y" * 48),  # forged
        hs256(claims(roles=["finance"], tenant_id="ten_x"), secret="y" * 48),  # forged, scoped
        hs256(claims(roles=["finance"], exp=1_000_000)),  # expired
        hs256(claims(roles=["finance"], tenant_id="ten_x", iat=int(time.time()) - 400, exp=int(time.time()) - 60)),
        handmade({"alg": "none"}, claims(roles=["finance"]), None),  # alg none
    ],
    ids=["forged", "forged-scoped", "expired", "expired-scoped", "alg-none"],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/tenants"), ("PUT", "/tenants/{t}/policy")])
async def test_bad_finance_tokens_get_a_401_not_a_403(
    api: httpx.AsyncClient, pg_pool: asyncpg.Pool, token: str, method: str, path: str
) -> None:
    tenant = await make_tenant(pg_pool, prefix="fin")
    response = await api.request(method, path.format(t=tenant.tenant_id), json={}, headers=as_(token))
    assert_openai_error(response, 401, "invalid_token")
    assert token not in response.text


async def test_a_tenant_admin_lists_only_its_own_tenant(api: httpx.AsyncClient, pg_pool: asyncpg.Pool) -> None:
    own = await make_tenant(pg_pool, prefix="own")
    token = hs256(claims(roles=["tenant_admin"], tenant_id=own.tenant_id))
    listed = (await api.get("/tenants", headers=as_(token))).json()["data"]
    assert [t["id"] for t in listed] == [own.tenant_id]


async def test_a_tenant_admin_manages_its_keys_audited_as_itself(api: httpx.AsyncClient, pg_pool: asyncpg.Pool) -> None:
    own = await make_tenant(pg_pool, prefix="own")
    headers = as_(hs256(claims(sub="dev@tenant", roles=["tenant_admin"], tenant_id=own.tenant_id)))
    key = (await api.post(f"/tenants/{own.tenant_id}/keys", headers=headers)).json()
    assert (await api.delete(f"/tenants/{own.tenant_id}/keys/{key['id']}", headers=headers)).status_code == 200
    await asyncio.sleep(0)
    actions = [(e.actor, e.action) for e in await audit_entries(pg_pool, own.tenant_id)]
    assert actions == [("dev@tenant", "key.revoke"), ("dev@tenant", "key.create")]


@pytest.mark.parametrize(("expired_ago", "status"), [(20, 200), (45, 401)])
async def test_exp_gets_exactly_the_documented_30_s_of_leeway(
    api: httpx.AsyncClient, expired_ago: int, status: int
) -> None:
    # docs/admin-api.md: `exp` is checked with 30 s of clock-skew leeway (20 s late passes, 45 s does not;
    # 15 s either side of the bound, far more than this request takes).
    now = int(time.time())
    token = hs256(claims(roles=["admin"], iat=now - 120, exp=now - expired_ago))
    response = await api.get("/tenants", headers=as_(token))
    if status == 401:
        assert_openai_error(response, 401, "invalid_token")
    else:
        assert response.status_code == 200, response.text


async def test_the_usage_route_is_the_sum_of_the_ledger_rows_since(
    api: httpx.AsyncClient, pg_pool: asyncpg.Pool
) -> None:
    from tests.test_usage_reports import T0, record_response

    tenant = await new_tenant(api)
    session_id = f"vgs_{secrets.token_hex(8)}"
    await pg_pool.execute(
        "INSERT INTO realtime_sessions (id, tenant_id, transport, started_at) VALUES ($1, $2, 'websocket', $3)",
        session_id,
        tenant["id"],
        T0,
    )
    for hours, cost, tokens in ((0, 1_000_001, 10), (1, 2_345, 20), (2, 7, 30)):
        await record_response(
            pg_pool, tenant["id"], session_id, T0 + timedelta(hours=hours), "gpt-realtime", cost, tokens
        )
    since = (T0 + timedelta(minutes=30)).isoformat()
    usage = (await api.get(f"/tenants/{tenant['id']}/usage", params={"since": since})).json()
    # The two rows from T0 + 1 h: 2_345 + 7 micro-USD; input 20 + 30 and output 20 + 30 tokens.
    assert usage["totals"] == {"responses": 2, "input_tokens": 50, "output_tokens": 50, "cost_micro_usd": 2_352}
    assert len(usage["responses"]) == 2
    assert usage["total_cost_micro_usd"] == 2_352  # no transcription
    everything = (await api.get(f"/tenants/{tenant['id']}/usage")).json()
    assert everything["totals"]["cost_micro_usd"] == 1_002_353
