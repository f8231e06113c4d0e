"""schemathesis over both HTTP APIs of a real gateway: no generated request gets a 5xx.

The gateway (with its OpenAPI document enabled), its emulator upstream, and real Postgres and
Redis run on an event loop in a thread of their own, because schemathesis drives them with
blocking calls from the test. Every operation of the served document is fuzzed as the caller
it is meant for (a tenant key on `/v1`, an admin JWT on `/admin/v1`, once with generated tenant
ids and once on a tenant that exists), with no credentials, with a forged token and with an
unknown key. Nothing here is a dependency outage, so a 503 (the answer for one) fails as a 500 does.

Only `not_a_server_error` is checked. The document does not yet describe the error bodies
(its 400s are Litestar's `{status_code, detail, extra}`, the API answers OpenAI-shaped errors)
nor the client-secret response (`string`, the API answers a JSON object), so schemathesis's
`response_schema_conformance` fails on both; see docs/admin-api.md for the real shapes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from gateway.app import create_app
from gateway.settings import AdminSettings, Settings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token, handmade
from tests.support.harness import Gateway, gateway_settings, make_tenant, start_emulator, start_gateway

pytestmark = [
    pytest.mark.e2e,
    # hypothesis warns when a generated body's repr is large; that is the fuzzer's business, not a fault.
    pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"),
]

T = TypeVar("T")
# Small and derandomized: the same requests on every run, the whole module in well under a minute.
FUZZ = settings(
    max_examples=12, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


@dataclass
class FuzzTarget:
    base_url: str
    tenant_key: str  # a key of the tenant the public API is fuzzed as
    admin_tenant_id: str  # another tenant, which the admin API may disable, re-tier, re-police
    document: dict[str, Any]  # what GET /docs/openapi.json served


class LoopThread:
    """An event loop on a thread of its own; `run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-gateway", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_target(pg_dsn: str) -> Iterator[FuzzTarget]:
    loop = LoopThread()
    started: dict[str, Any] = {}

    async def start() -> FuzzTarget:
        started["emulator"] = emulator = await start_emulator()
        settings_ = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
        settings_ = replace(
            settings_,
            admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER),
            security=replace(settings_.security, api_docs=True),
        )
        started["gateway"] = gateway = await start_gateway(settings_)
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            key = await make_tenant(pool, "fuzz")
            admin_tenant = await make_tenant(pool, "fuzz-admin")
        finally:
            await pool.close()
        async with httpx.AsyncClient(base_url=gateway.server.http_url) as http:
            document = (await http.get("/docs/openapi.json")).raise_for_status().json()
        return FuzzTarget(gateway.server.http_url, key.secret, admin_tenant.tenant_id, document)

    async def stop() -> None:
        gateway: Gateway | None = started.get("gateway")
        if gateway is not None:
            await gateway.stop()
        if "emulator" in started:
            await started["emulator"].stop()

    try:
        yield loop.run(start())
    finally:
        loop.run(stop())
        loop.close()


def served_document() -> dict[str, Any]:
    """The OpenAPI document a gateway with the docs enabled serves, built in-process (no I/O)."""
    settings_ = Settings()
    document: dict[str, Any] = create_app(
        replace(settings_, security=replace(settings_.security, api_docs=True))
    ).openapi_schema.to_schema()
    return document


DOCUMENT = served_document()
# Mostly models a tenant may use, so that most bodies get past the policy to the upstream.
MODEL = {"anyOf": [{"enum": ["gpt-realtime", "gpt-realtime-mini"]}, {"type": "string"}]}
SESSION = {
    "type": "object",
    "properties": {
        "type": {"enum": ["realtime", "transcription"]},
        "model": MODEL,
        "max_output_tokens": {"type": ["integer", "string"]},
        "audio": {"type": "object"},
    },
}
EXPIRES_AFTER = {"type": "object", "properties": {"anchor": {"type": "string"}, "seconds": {"type": "integer"}}}
# The public routes read their bodies themselves, so the document names none; without one the
# fuzzer would never send a body. These are the shapes the routes accept (docs/webrtc.md), loosely.
PUBLIC_BODIES: dict[str, dict[str, Any]] = {
    "/v1/realtime/client_secrets": {
        "application/json": {
            "schema": {"type": "object", "properties": {"session": SESSION, "expires_after": EXPIRES_AFTER}}
        }
    },
    "/v1/realtime/calls": {
        "application/sdp": {"schema": {"type": "string"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["sdp"],
                "properties": {"sdp": {"type": "string"}, "session": SESSION},
            }
        },
    },
}


def with_public_bodies(document: dict[str, Any]) -> dict[str, Any]:
    paths = {path: dict(item) for path, item in document["paths"].items()}
    for path, content in PUBLIC_BODIES.items():
        paths[path]["post"] = {**paths[path]["post"], "requestBody": {"required": False, "content": content}}
    return {**document, "paths": paths}


@schemathesis.serializer("application/sdp")
def sdp_body(_: schemathesis.SerializationContext, value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.openapi.from_dict(with_public_bodies(DOCUMENT))
BAD_CREDENTIALS = {
    "none": {},
    "forged admin JWT": {
        "Authorization": "Bearer "
        + handmade({"alg": "none", "typ": "JWT"}, {"sub": "mallory", "roles": ["admin"], "aud": AUDIENCE}, None)
    },
    "unknown tenant key": {"Authorization": "Bearer vg_live_" + "x" * 43},
}


def assert_no_server_error(case: schemathesis.Case, target: FuzzTarget, headers: dict[str, str]) -> None:
    response = case.call(base_url=target.base_url, headers=headers, timeout=10)
    # 5xx of any kind fails, 503 included: Postgres, Redis and the upstream are all up here.
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} query={case.query} headers={case.headers} body={case.body!r} -> "
        f"{response.status_code} {response.text[:500]}"
    )
    case.validate_response(response, checks=[not_a_server_error], headers=headers)


def test_the_fuzzed_document_is_the_served_one(fuzz_target: FuzzTarget) -> None:
    assert fuzz_target.document == DOCUMENT
    assert {"/v1/realtime/client_secrets", "/admin/v1/tenants"} <= set(DOCUMENT["paths"])
    for path in PUBLIC_BODIES:  # the day the document names these bodies, fuzz those instead
        assert "requestBody" not in DOCUMENT["paths"][path]["post"], path


def test_options_on_an_admin_route_lists_its_methods(fuzz_target: FuzzTarget) -> None:
    # Found by this fuzz: the guard read a permission Litestar's automatic OPTIONS handler has not got (500).
    with httpx.Client(base_url=fuzz_target.base_url) as http:
        allowed = http.options("/admin/v1/tiers", headers={"Authorization": f"Bearer {admin_token()}"})
        assert allowed.status_code == 204, allowed.text
        assert set(allowed.headers["allow"].split(", ")) == {"GET", "OPTIONS"}
        assert http.options("/admin/v1/tiers").status_code == 401  # still only for a valid token


def nul_requests(tenant_id: str) -> list[tuple[str, str, bytes | None]]:
    """Requests carrying text Postgres cannot store (NUL, a lone surrogate) into each kind of query."""
    tenant = f"/admin/v1/tenants/{tenant_id}"
    return [
        ("POST", "/admin/v1/tenants", b'{"name": "acme\\u0000"}'),
        ("POST", "/admin/v1/tenants", b'{"name": "acme\\ud800"}'),
        ("GET", "/admin/v1/tenants/ten%00x", None),
        ("GET", "/admin/v1/tenants/ten%00x/usage", None),
        ("POST", "/admin/v1/tenants/ten%00x/disable", None),
        ("PUT", "/admin/v1/tenants/ten%00x/policy", b"{}"),
        ("DELETE", f"{tenant}/keys/key%00x", None),
        ("POST", f"{tenant}/keys", b'{"name": "ci\\u0000"}'),
        ("PUT", f"{tenant}/policy", b'{"models": ["gpt-realtime\\u0000"]}'),
        ("PUT", f"{tenant}/browser-auth", b'{"hs256_secret": "' + b"s" * 40 + b'", "audience": "web\\u0000"}'),
    ]


def test_text_postgres_cannot_store_is_a_client_error(fuzz_target: FuzzTarget) -> None:
    # Found by this fuzz with more examples: a NUL in a tenant name was a 500 (asyncpg's DataError).
    headers = {"Authorization": f"Bearer {admin_token()}", "Content-Type": "application/json"}
    with httpx.Client(base_url=fuzz_target.base_url, headers=headers) as http:
        for method, path, body in nul_requests(fuzz_target.admin_tenant_id):
            response = http.request(method, path, content=body)
            assert response.status_code == 400, (method, path, body, response.text)
            assert response.json()["error"]["code"] == "invalid_request", (method, path, body, response.text)


@pytest.mark.parametrize("since", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_usage_since_with_no_utc_time_is_a_client_error(fuzz_target: FuzzTarget, since: str) -> None:
    # Found by probing around the fuzz: asyncpg's conversion to UTC overflowed (500).
    with httpx.Client(base_url=fuzz_target.base_url, headers={"Authorization": f"Bearer {admin_token()}"}) as http:
        path = f"/admin/v1/tenants/{fuzz_target.admin_tenant_id}/usage"
        response = http.get(path, params={"since": since})
        assert response.status_code == 400, response.text
        assert response.json()["error"] | {"message": None} == {
            "message": None,
            "type": "invalid_request_error",
            "code": "invalid_request",
            "param": "since",
        }
        in_range = http.get(path, params={"since": "0001-01-02T00:00:00+14:00"})  # the edge, one day in
        assert in_range.status_code == 200, in_range.text


def test_a_browser_token_naming_an_impossible_tenant_is_refused_like_an_unknown_one(fuzz_target: FuzzTarget) -> None:
    def token(tenant_id: str) -> str:
        claims = {"tenant_id": tenant_id, "sub": "u", "aud": "voxgate", "exp": int(time.time()) + 60}
        return handmade({"alg": "HS256", "typ": "JWT"}, claims, b"k" * 32)

    with httpx.Client(base_url=fuzz_target.base_url) as http:
        answers = []
        for tenant_id in ("ten_nosuchtenant00", "ten_\x00x", "tén_x"):  # unknown, NUL (was a 500), not ASCII
            response = http.get("/v1/realtime/calls/rtc_x", headers={"Authorization": f"Bearer {token(tenant_id)}"})
            assert response.status_code == 401, (tenant_id, response.text)
            answers.append(response.json())
        assert answers[0]["error"]["code"] == "invalid_token"
        assert answers[1] == answers[0] and answers[2] == answers[0]  # no oracle between them


@schema.include(path_regex="^/admin/").parametrize()
@FUZZ
def test_admin_api_as_an_admin(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    assert_no_server_error(case, fuzz_target, {"Authorization": f"Bearer {admin_token()}"})


# Not PUT browser-auth: on a tenant that exists it resolves the generated JWKS host (DNS, off loopback).
@(
    schema.include(path_regex="^/admin/v1/tenants/{tenant_id}")
    .exclude(method="PUT", path="/admin/v1/tenants/{tenant_id}/browser-auth")
    .parametrize()
)
@FUZZ
def test_admin_api_on_an_existing_tenant(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    case.path_parameters = {**(case.path_parameters or {}), "tenant_id": fuzz_target.admin_tenant_id}
    assert_no_server_error(case, fuzz_target, {"Authorization": f"Bearer {admin_token()}"})


@schema.exclude(path_regex="^/admin/").parametrize()
@FUZZ
def test_public_api_with_a_tenant_key(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    assert_no_server_error(case, fuzz_target, {"Authorization": f"Bearer {fuzz_target.tenant_key}"})


@pytest.fixture(params=list(BAD_CREDENTIALS))
def bad_credentials(request: pytest.FixtureRequest) -> dict[str, str]:
    return BAD_CREDENTIALS[request.param]


@schema.parametrize()
@FUZZ
def test_both_apis_without_valid_credentials(
    case: schemathesis.Case, fuzz_target: FuzzTarget, bad_credentials: dict[str, str]
) -> None:
    assert_no_server_error(case, fuzz_target, bad_credentials)


def test_text_postgres_cannot_store_is_a_client_error_beyond_the_admin_api(fuzz_target: FuzzTarget) -> None:
    # Found by a hostile review: the costs API, the alert log and GPT-Live call control answered a
    # NUL in a query parameter or a path id with a 500 (only the admin API mapped it to a 400).
    admin = {"Authorization": f"Bearer {admin_token()}"}
    tenant = {"Authorization": f"Bearer {fuzz_target.tenant_key}"}
    start = int(time.time()) - 86_400
    requests = [
        ("GET", f"/v1/organization/costs?start_time={start}&models=%00", admin),
        ("GET", f"/v1/organization/costs?start_time={start}&project_ids=ten_%00", admin),
        ("GET", f"/v1/organization/costs?start_time={start}&api_key_ids=key_%00", admin),
        ("GET", f"/v1/organization/costs?start_time={start}&group_by=tag&tag_key=a%00", admin),
        ("GET", "/v1/organization/alerts?project_id=%00", admin),
        ("POST", "/v1/live/sessions/%00/hangup", tenant),
        ("POST", "/v1/live/sessions/x%00/reject", tenant),
    ]
    with httpx.Client(base_url=fuzz_target.base_url) as http:
        for method, path, headers in requests:
            response = http.request(method, path, headers=headers)
            assert response.status_code == 400, (method, path, response.text)
            assert response.json()["error"]["code"] == "invalid_request", (method, path, response.text)
