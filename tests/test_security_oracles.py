"""Issue S §9: answers that tell an outsider nothing, and documents served only on purpose.

* A browser token nobody can verify gets one answer, whether its tenant exists or not:
  the same status, body and headers, in comparable time.
* The OpenAPI document is served only with `VOXGATE_API_DOCS=true`, and then as JSON only
  (no HTML page, nothing fetched from a CDN).
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.browser import BrowserTokenVerifier
from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthStore
from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import handmade
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_gateway

pytestmark = pytest.mark.e2e

HS_SECRET = secrets.token_urlsafe(40)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(tenant_id: str) -> dict[str, Any]:
    now = int(time.time())
    return {"tenant_id": tenant_id, "sub": "user-1", "aud": "voxgate", "iat": now, "exp": now + 300}


def forgeries(tenant_id: str) -> dict[str, str]:
    """Tokens an attacker without the tenant's key can make."""
    return {
        "a guessed secret": jwt.encode(claims(tenant_id), secrets.token_urlsafe(40), algorithm="HS256"),
        "alg none": handmade({"alg": "none", "typ": "JWT"}, claims(tenant_id), None),
        "an RS256 key of its own": jwt.encode(claims(tenant_id), RSA_KEY, algorithm="RS256", headers={"kid": "k"}),
        "an ES512 header": handmade({"alg": "ES512", "typ": "JWT"}, claims(tenant_id), b"x"),
    }


async def test_unknown_and_existing_tenants_get_the_same_answer(gateway, pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "oracle")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    unknown_id = "ten_" + secrets.token_hex(8)
    url = f"{gateway.base_url}/realtime/calls/rtc_nope"
    async with httpx.AsyncClient() as http:
        for name, forged in forgeries(tenant.tenant_id).items():
            stranger = forgeries(unknown_id)[name]
            existing = await http.get(url, headers={"Authorization": f"Bearer {forged}"})
            missing = await http.get(url, headers={"Authorization": f"Bearer {stranger}"})
            assert existing.status_code == missing.status_code == 401, name
            assert existing.content == missing.content, name
            keep = ("content-type", "www-authenticate", "x-should-retry")
            assert {k: existing.headers.get(k) for k in keep} == {k: missing.headers.get(k) for k in keep}, name


async def test_unknown_and_existing_tenants_take_comparable_time(pg_pool: asyncpg.Pool) -> None:
    # No cache, so both paths read Postgres every time: the difference left is one HMAC.
    tenant = await make_tenant(pg_pool, "timing")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    verifier = BrowserTokenVerifier(BrowserAuthStore(pg_pool), cache_seconds=0)
    guess = secrets.token_urlsafe(40)
    existing = jwt.encode(claims(tenant.tenant_id), guess, algorithm="HS256")
    missing = jwt.encode(claims("ten_" + secrets.token_hex(8)), guess, algorithm="HS256")
    timings: dict[str, list[float]] = {"existing": [], "missing": []}
    for _ in range(40):
        for name, token in (("existing", existing), ("missing", missing)):
            started = time.perf_counter()
            with pytest.raises(GatewayError):
                await verifier.verify(token)
            timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(samples) for name, samples in timings.items()}
    # One Postgres round trip each (about a millisecond); an oracle would be another round trip or a fetch.
    assert abs(medians["existing"] - medians["missing"]) < 0.5 * min(medians.values()) + 0.0005, medians


# -- the OpenAPI document -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def docs_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    gateway = await start_gateway(replace(settings, security=replace(settings.security, api_docs=True)))
    yield gateway
    await gateway.stop()


@pytest.mark.parametrize("path", ["/docs", "/docs/openapi.json", "/docs/swagger", "/docs/openapi.yaml", "/schema"])
async def test_no_documents_by_default(gateway, path: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
        assert (await http.get(path)).status_code == 404


async def test_the_json_document_only_when_enabled(docs_gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=docs_gateway.server.http_url) as http:
        schema = await http.get("/docs/openapi.json")
        assert schema.status_code == 200
        assert "realtime_calls_create" in schema.text
        assert (await http.get("/docs")).json() == schema.json()  # the root is the same JSON, not a page
        for page in ("/docs/swagger", "/docs/redoc", "/docs/scalar", "/docs/elements", "/docs/rapidoc"):
            response = await http.get(page)
            assert response.status_code == 404, page
            assert "<script" not in response.text.lower(), page  # nothing loads code from anywhere


def test_the_docs_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).security.api_docs is False
    assert Settings.from_env({"VOXGATE_API_DOCS": "true"}).security.api_docs is True
