"""Issue S §2: a JWKS URL can never make voxgate talk to loopback, private or metadata addresses.

Checked where the URL is set (the admin API and `voxgate tenant jwt`: 400 naming `jwks_url`)
and again at every fetch (the host resolved, every address checked, no redirects). Only an
operator's `VOXGATE_JWKS_ALLOWED_HOSTS` exempts a host. The JWKS server here is real HTTP on
127.0.0.1 that records every request it gets.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway import cli
from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthConfigError
from gateway.auth.jwks import JwksUrlRefused, check_jwks_url, resolve_jwks_host
from gateway.auth.jwt import KeySet
from gateway.errors import GatewayError
from gateway.settings import AdminSettings, Settings
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import Gateway, gateway_settings, start_gateway
from tests.support.jwks_server import DOCUMENT_PATH, JwksServer, public_jwk

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# One URL per address class voxgate refuses by default, each as a tenant admin might write it.
REFUSED_URLS = {
    "redis on loopback, plain http": "http://127.0.0.1:6379/",
    "loopback": "https://127.0.0.1/jwks.json",
    "loopback, whole /8": "https://127.9.9.9/jwks.json",
    "loopback, decimal": "https://2130706433/jwks.json",
    "loopback, hex and short": "https://0x7f.1/jwks.json",
    "loopback, IPv6": "https://[::1]/jwks.json",
    "loopback, IPv4-mapped IPv6": "https://[::ffff:127.0.0.1]/jwks.json",
    "localhost by name": "https://localhost/jwks.json",
    "a .localhost name": "https://idp.localhost/jwks.json",
    "unspecified": "https://0.0.0.0/jwks.json",
    "private 10/8": "https://10.1.2.3/jwks.json",
    "private 172.16/12": "https://172.16.0.1/jwks.json",
    "private 192.168/16": "https://192.168.1.1/jwks.json",
    "link-local (AWS/GCP/Azure metadata)": "https://169.254.169.254/latest/meta-data/",
    "link-local IPv6": "https://[fe80::1]/jwks.json",
    "unique-local IPv6": "https://[fc00::1]/jwks.json",
    "EC2 IPv6 metadata": "https://[fd00:ec2::254]/latest/meta-data/",
    "CGNAT 100.64/10": "https://100.64.0.1/jwks.json",
    "metadata through 6to4": "https://[2002:a9fe:a9fe::]/jwks.json",
    "metadata through NAT64": "https://[64:ff9b::a9fe:a9fe]/jwks.json",
    "user info": "https://idp.example@127.0.0.1/jwks.json",
    "plain http to a public host": "http://idp.example.com/jwks.json",
    "not http at all": "file:///etc/passwd",
    "a percent-encoded host": "https://%31%32%37.0.0.1/jwks.json",
    "a broken IPv6 literal": "https://[::1/jwks.json",
    "a control character": "https://idp.example\x00.127.0.0.1/jwks.json",
}


@pytest.mark.parametrize("url", REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_each_address_class_is_refused_when_set(url: str) -> None:
    with pytest.raises(BrowserAuthConfigError):
        BrowserAuthConfig("ten_x", jwks_url=url).validate()


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "https://8.8.8.8/jwks.json",
        "https://[2606:4700::1111]/jwks.json",
    ],
)
def test_public_https_urls_are_accepted(url: str) -> None:
    BrowserAuthConfig("ten_x", jwks_url=url).validate()


def test_an_allowed_host_may_be_loopback_and_plain_http() -> None:
    allowed = frozenset({"127.0.0.1", "idp.internal"})
    BrowserAuthConfig("ten_x", jwks_url="http://127.0.0.1:9/jwks.json").validate(allowed)
    BrowserAuthConfig("ten_x", jwks_url="http://IDP.internal./jwks.json").validate(allowed)
    with pytest.raises(BrowserAuthConfigError):  # the allowlist names hosts, not addresses behind them
        BrowserAuthConfig("ten_x", jwks_url="http://localhost:9/jwks.json").validate(allowed)


def test_the_allowlist_setting_is_read_from_the_environment() -> None:
    settings = Settings.from_env({"VOXGATE_JWKS_ALLOWED_HOSTS": " IdP.Internal. , 127.0.0.1 ,"})
    assert settings.security.jwks_allowed_hosts == {"idp.internal", "127.0.0.1"}
    assert Settings.from_env({}).security.jwks_allowed_hosts == frozenset()


# -- at fetch time ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    """JWKS on 127.0.0.1; `/moved` answers 302 to the real document."""
    document = {"keys": [public_jwk(RSA_KEY.public_key(), "rsa-1", "RS256")]}
    with JwksServer(document, redirects={"/moved": DOCUMENT_PATH}) as server:
        yield server


def token(kid: str = "rsa-1") -> str:
    now = int(time.time())
    claims = {"sub": "u", "aud": "voxgate", "iat": now, "exp": now + 60}
    return jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": kid})


async def decode(keys: KeySet) -> dict[str, Any]:
    return await keys.decode(token(), audience="voxgate", issuer=None, required=["exp"])


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    # Checked by resolution, not by the name: every address the host resolves to must be public.
    with pytest.raises(JwksUrlRefused, match="loopback"):
        resolve_jwks_host(urlsplit("https://localhost:443/jwks.json"))
    assert "127.0.0.1" in resolve_jwks_host(urlsplit("https://localhost:443/jwks.json"), frozenset({"localhost"}))


async def test_fetch_time_refusal_never_connects(jwks: JwksServer) -> None:
    # As if DNS changed after the URL was stored: the fetch checks again and never connects.
    before = len(jwks.hits)
    for url in (jwks.url_for("localhost", scheme="https"), jwks.url_for("localhost"), jwks.url):
        with pytest.raises(GatewayError) as caught:
            await decode(KeySet(jwks_url=url))
        assert (caught.value.status, caught.value.message) == (401, "No trusted key matches the token.")
    assert len(jwks.hits) == before


async def test_an_allowed_host_is_fetched(jwks: JwksServer) -> None:
    before = len(jwks.hits)
    claims = await decode(KeySet(jwks_url=jwks.url_for("localhost"), jwks_allowed_hosts=frozenset({"localhost"})))
    assert claims["sub"] == "u"
    assert jwks.hits[before:] == ["/.well-known/jwks.json"]


async def test_redirects_are_not_followed(jwks: JwksServer) -> None:
    before = len(jwks.hits)
    keys = KeySet(jwks_url=jwks.url_for(path="/moved"), jwks_allowed_hosts=frozenset({"127.0.0.1"}))
    with pytest.raises(GatewayError) as caught:
        await decode(keys)
    assert caught.value.status == 401
    assert jwks.hits[before:] == ["/moved"]  # the target was never asked for


# -- through the admin API and the CLI ------------------------------------------------------


@pytest.fixture(scope="module")
async def admin_gateway(pg_dsn: str, emulator: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    gateway = await start_gateway(
        replace(settings, admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER))
    )
    yield gateway
    await gateway.stop()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.7/jwks.json",
        "https://localhost/jwks.json",
    ],
)
async def test_the_admin_api_refuses_internal_jwks_urls(admin_gateway: Gateway, url: str) -> None:
    async with httpx.AsyncClient(
        base_url=f"{admin_gateway.server.http_url}/admin/v1", headers={"authorization": f"Bearer {admin_token()}"}
    ) as api:
        tenant = (await api.post("/tenants", json={"name": f"ssrf-{secrets.token_hex(3)}"})).json()
        path = f"/tenants/{tenant['id']}/browser-auth"
        response = await api.put(path, json={"jwks_url": url})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "code": "invalid_browser_auth",
            "param": "jwks_url",
        }
        assert (await api.get(path)).status_code == 404  # nothing was stored


@pytest.mark.e2e
def test_the_cli_refuses_internal_jwks_urls(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOXGATE_DATABASE_URL", pg_dsn)
    monkeypatch.delenv("VOXGATE_JWKS_ALLOWED_HOSTS", raising=False)
    assert cli.main(["tenant", "create", f"cli-ssrf-{secrets.token_hex(3)}", "--json"]) == 0
    tenant_id = json.loads(capsys.readouterr().out)["id"]
    assert cli.main(["tenant", "jwt", tenant_id, "--jwks-url", "http://127.0.0.1:6379/"]) == 2
    assert cli.main(["tenant", "jwt", tenant_id, "--jwks-url", "https://169.254.169.254/"]) == 2
    monkeypatch.setenv("VOXGATE_JWKS_ALLOWED_HOSTS", "127.0.0.1")
    assert cli.main(["tenant", "jwt", tenant_id, "--jwks-url", "http://127.0.0.1:9/jwks.json"]) == 0


def test_check_jwks_url_is_what_set_time_uses() -> None:
    parts = check_jwks_url("https://idp.example.com:8443/keys?v=2")
    assert (parts.hostname, parts.port, parts.query) == ("idp.example.com", 8443, "v=2")
