"""Admin JWT verification: good tokens from every key source pass; every attack is a safe 401."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.admin.tokens import AdminPrincipal, AdminTokenVerifier, Permission, bearer_token
from gateway.auth.jwks import JWKS_REFETCH_COOLDOWN_SECONDS
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.settings import AdminSettings, Settings, SettingsError
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, claims, handmade, hs256
from tests.support.clock import FakeClock
from tests.support.jwks_server import JwksServer, public_jwk

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    """A JWKS document served over real HTTP on 127.0.0.1 (one RSA and one P-256 key)."""
    document = {
        "keys": [public_jwk(RSA_KEY.public_key(), "rsa-1", "RS256"), public_jwk(EC_KEY.public_key(), "ec-1", "ES256")]
    }
    with JwksServer(document) as server:
        yield server


def verifier(clock: Clock = SYSTEM_CLOCK, **admin: Any) -> AdminTokenVerifier:
    return AdminTokenVerifier(AdminSettings(**{"jwt_audience": AUDIENCE, "jwt_issuer": ISSUER, **admin}), clock=clock)


def key_cache_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """One fake clock for voxgate's JWKS cooldown (injected) and PyJWT's key caches.

    PyJWT reads `time.monotonic` in its own modules, so only their view of it is replaced."""
    clock = FakeClock()
    for module in ("jwt.api_jwk", "jwt.jwk_set_cache", "jwt.jwks_client"):
        monkeypatch.setattr(f"{module}.time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


async def refused(v: AdminTokenVerifier, token: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await v.verify(token)
    error = caught.value
    assert error.status == 401
    assert error.code == "invalid_token"
    assert not token or token not in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"
    return error


# --- good tokens --------------------------------------------------------------------------------


async def test_hs256_secret_token_gives_subject_and_roles() -> None:
    principal = await verifier(jwt_secret=SECRET).verify(hs256(claims(sub="ops@acme", roles=["admin", "finance"])))
    assert principal == AdminPrincipal(subject="ops@acme", roles=frozenset({"admin", "finance"}), tenant_id=None)


async def test_single_role_claim_and_tenant_scope() -> None:
    token = hs256(claims(role="tenant_admin", tenant_id="ten_1"))
    principal = await verifier(jwt_secret=SECRET).verify(token)
    assert principal.roles == {"tenant_admin"}
    assert principal.tenant_id == "ten_1"


@pytest.mark.parametrize(("key", "alg"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
async def test_pem_public_key_tokens(key: Any, alg: str) -> None:
    token = jwt.encode(claims(roles=["admin"]), key, algorithm=alg)
    principal = await verifier(jwt_public_key=pem(key)).verify(token)
    assert principal.subject == "alice"


async def test_pem_public_key_can_be_a_file_path(tmp_path: Any) -> None:
    path = tmp_path / "admin.pem"
    path.write_text(pem(RSA_KEY))
    token = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256")
    assert (await verifier(jwt_public_key=str(path)).verify(token)).subject == "alice"


@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")])
async def test_jwks_served_tokens(jwks: JwksServer, key: Any, alg: str, kid: str) -> None:
    token = jwt.encode(claims(roles=["finance"]), key, algorithm=alg, headers={"kid": kid})
    principal = await verifier(jwks_url=jwks.url).verify(token)
    assert principal.roles == {"finance"}


async def test_jwks_keys_are_cached(jwks: JwksServer) -> None:
    v = verifier(jwks_url=jwks.url)
    token = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    before = len(jwks.hits)
    for _ in range(5):
        await v.verify(token)
    assert len(jwks.hits) - before == 1


async def test_jwks_keys_are_fetched_again_after_exactly_five_minutes(
    jwks: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/admin-api.md: "the key set is cached for 5 minutes".
    clock = key_cache_clock(monkeypatch)
    v = verifier(jwks_url=jwks.url, clock=clock)
    token = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    before = len(jwks.hits)
    await v.verify(token)
    await clock.advance(5 * 60 - 1)
    await v.verify(token)
    assert len(jwks.hits) - before == 1  # still cached just inside 5 minutes
    await clock.advance(2)
    await v.verify(token)
    assert len(jwks.hits) - before == 2  # fetched again just past them


async def test_unknown_kids_do_not_storm_the_jwks(jwks: JwksServer) -> None:
    # 20 tokens, 20 kids the JWKS does not have: one fetch, and at most one refetch per cooldown.
    v = verifier(jwks_url=jwks.url)
    before = len(jwks.hits)
    for n in range(20):
        token = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256", headers={"kid": f"rotated-{n}"})
        error = await refused(v, token)
        assert error.message == "No trusted key matches the token."
    assert len(jwks.hits) - before <= 2
    # The set it did fetch still verifies a known kid without another fetch.
    token = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await v.verify(token)).roles == {"admin"}
    assert len(jwks.hits) - before <= 2


async def test_a_new_kid_is_fetched_once_the_cooldown_has_passed(
    jwks: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = key_cache_clock(monkeypatch)
    v = verifier(jwks_url=jwks.url, clock=clock)
    before = len(jwks.hits)
    unknown = jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256", headers={"kid": "later"})
    await refused(v, unknown)
    await clock.advance(JWKS_REFETCH_COOLDOWN_SECONDS - 1)
    await refused(v, unknown)
    assert len(jwks.hits) - before == 1  # inside the cooldown: no refetch
    await clock.advance(2)
    await refused(v, unknown)
    assert len(jwks.hits) - before == 2  # past it: one refetch for the unknown kid


# --- the attack matrix --------------------------------------------------------------------------


async def test_forged_signature_is_refused() -> None:
    error = await refused(verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"]), secret="x" * 48))
    assert "signature" in error.message


async def test_tampered_payload_is_refused() -> None:
    token = hs256(claims(roles=["finance"]))
    header, _, signature = token.split(".")
    forged_payload = handmade({"alg": "HS256"}, claims(roles=["admin"]), None).split(".")[1]
    await refused(verifier(jwt_secret=SECRET), f"{header}.{forged_payload}.{signature}")


async def test_expired_token_is_refused() -> None:
    error = await refused(verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"], exp=1_000_000)))
    assert "expired" in error.message


async def test_wrong_audience_is_refused() -> None:
    error = await refused(verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"], aud="someone-else")))
    assert "audience" in error.message


async def test_wrong_issuer_is_refused() -> None:
    error = await refused(verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"], iss="https://evil.test")))
    assert "issuer" in error.message


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(alg: str) -> None:
    await refused(verifier(jwt_secret=SECRET), handmade({"alg": alg, "typ": "JWT"}, claims(roles=["admin"]), None))


async def test_key_confusion_hmac_signed_with_the_public_pem_is_refused() -> None:
    public_pem = pem(RSA_KEY)
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), public_pem.encode())
    await refused(verifier(jwt_public_key=public_pem), token)
    # Also when a secret is configured next to the public key: the secret, not the PEM, checks HS256.
    await refused(verifier(jwt_public_key=public_pem, jwt_secret=SECRET), token)


async def test_rs256_token_is_refused_when_only_a_secret_is_configured() -> None:
    await refused(verifier(jwt_secret=SECRET), jwt.encode(claims(roles=["admin"]), RSA_KEY, algorithm="RS256"))


async def test_es256_token_is_refused_by_an_rsa_public_key() -> None:
    await refused(verifier(jwt_public_key=pem(RSA_KEY)), jwt.encode(claims(roles=["admin"]), EC_KEY, algorithm="ES256"))


async def test_jwks_unknown_kid_and_foreign_key_are_refused(jwks: JwksServer) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    v = verifier(jwks_url=jwks.url)
    await refused(v, jwt.encode(claims(roles=["admin"]), stranger, algorithm="ES256", headers={"kid": "nope"}))
    await refused(v, jwt.encode(claims(roles=["admin"]), stranger, algorithm="ES256", headers={"kid": "ec-1"}))


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "aud", "iss"])
async def test_missing_required_claim_is_refused(missing: str) -> None:
    payload = claims(roles=["admin"])
    del payload[missing]
    error = await refused(verifier(jwt_secret=SECRET), hs256(payload))
    assert missing in error.message


async def test_a_ten_year_token_is_refused() -> None:
    now = int(time.time())
    error = await refused(
        verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"], iat=now, exp=now + 10 * 365 * 86400))
    )
    assert "too long" in error.message


async def test_the_lifetime_cap_is_exact_and_configurable() -> None:
    now = int(time.time())
    day = hs256(claims(roles=["admin"], iat=now, exp=now + 86400))
    assert (await verifier(jwt_secret=SECRET).verify(day)).subject == "alice"  # the default: 24 h
    await refused(verifier(jwt_secret=SECRET), hs256(claims(roles=["admin"], iat=now, exp=now + 86401)))
    await refused(verifier(jwt_secret=SECRET, jwt_max_lifetime_seconds=3600), day)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("kind", ["string", "bool", "list"])
async def test_time_claims_must_be_numbers(claim: str, kind: str) -> None:
    now = int(time.time())
    value = {"exp": now + 300, "iat": now, "nbf": now - 10}[claim]
    bad = {"string": str(value), "bool": True, "list": [value]}[kind]
    error = await refused(verifier(jwt_secret=SECRET), hs256({**claims(roles=["admin"]), claim: bad}))
    assert error.status == 401


def test_the_lifetime_setting_is_read_from_the_environment() -> None:
    env = {"VOXGATE_ADMIN_JWT_MAX_LIFETIME_SECONDS": "600"}
    assert Settings.from_env(env).admin.jwt_max_lifetime_seconds == 600
    assert Settings.from_env({}).admin.jwt_max_lifetime_seconds == 86400


async def test_iss_is_optional_when_no_issuer_is_configured() -> None:
    payload = claims(roles=["admin"])
    del payload["iss"]
    v = AdminTokenVerifier(AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE))
    assert (await v.verify(hs256(payload))).subject == "alice"


@pytest.mark.parametrize(
    "bad", [{"sub": ""}, {"roles": "admin"}, {"roles": [1]}, {"role": ["admin"]}, {"roles": ["tenant_admin"]}]
)
async def test_malformed_claims_are_refused(bad: dict[str, Any]) -> None:
    await refused(verifier(jwt_secret=SECRET), hs256({**claims(roles=["admin"]), **bad}))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.", "x" * 5000])
async def test_malformed_tokens_are_refused(token: str) -> None:
    await refused(verifier(jwt_secret=SECRET), token)


async def test_nothing_configured_refuses_everything() -> None:
    error = await refused(AdminTokenVerifier(AdminSettings()), hs256(claims(roles=["admin"])))
    assert "disabled" in error.message


def test_short_secret_and_bad_pem_are_settings_errors() -> None:
    with pytest.raises(SettingsError, match="VOXGATE_ADMIN_JWT_SECRET"):
        AdminTokenVerifier(AdminSettings(jwt_secret="short"))
    with pytest.raises(SettingsError, match="VOXGATE_ADMIN_JWT_PUBLIC_KEY"):
        AdminTokenVerifier(AdminSettings(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer   "])
def test_bearer_header_is_required(header: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        bearer_token(header)
    assert caught.value.status == 401


# --- roles ----------------------------------------------------------------------------------------


def test_role_permissions() -> None:
    admin = AdminPrincipal("a", frozenset({"admin"}), None)
    finance = AdminPrincipal("f", frozenset({"finance"}), None)
    scoped = AdminPrincipal("t", frozenset({"tenant_admin"}), "ten_1")
    nobody = AdminPrincipal("n", frozenset({"viewer"}), None)
    assert all(admin.grants(p, "ten_2") for p in Permission)
    assert finance.grants(Permission.USAGE_READ, "ten_2")
    assert not finance.grants(Permission.POLICY_WRITE, "ten_2")
    assert not finance.grants(Permission.KEYS_WRITE, "ten_2")
    assert scoped.grants(Permission.KEYS_WRITE, "ten_1")
    assert not scoped.grants(Permission.KEYS_WRITE, "ten_2")
    assert not scoped.grants(Permission.POLICY_WRITE, "ten_1")
    assert not scoped.grants(Permission.TENANTS_WRITE, "ten_1")
    assert not any(nobody.grants(p, None) for p in Permission)


def test_a_finance_token_with_a_tenant_claim_reads_only_that_tenant() -> None:
    """docs/admin-api.md, "Roles": finance is read-only; its `tenant_id` claim, when present, scopes it."""
    everywhere = AdminPrincipal("f", frozenset({"finance"}), None)
    scoped = AdminPrincipal("f", frozenset({"finance"}), "ten_1")
    writes = {p for p in Permission if p.value.endswith((":write", ":create"))}
    assert writes == {
        Permission.TENANTS_CREATE,
        Permission.TENANTS_WRITE,
        Permission.KEYS_WRITE,
        Permission.POLICY_WRITE,
        Permission.ALERTS_WRITE,
    }
    for principal in (everywhere, scoped):
        assert not any(principal.grants(p, t) for p in writes for t in ("ten_1", "ten_2", None))
        assert not principal.grants(Permission.KEYS_READ, "ten_1")
    assert everywhere.unscoped and everywhere.sees_tenant("ten_2")
    assert everywhere.grants(Permission.ALERTS_READ, "ten_2")
    assert not scoped.unscoped
    assert scoped.sees_tenant("ten_1") and not scoped.sees_tenant("ten_2")
    assert scoped.grants(Permission.USAGE_READ, "ten_1") and not scoped.grants(Permission.USAGE_READ, "ten_2")
    assert scoped.grants(Permission.TENANTS_READ, None)  # a list: filtered to the tenant by the route
    # An admin role reaches every tenant whatever the token's tenant_id claim says.
    assert AdminPrincipal("a", frozenset({"admin", "finance"}), "ten_1").grants(Permission.POLICY_WRITE, "ten_2")


@pytest.mark.parametrize(
    ("roles", "claim"), [(["finance"], ""), (["finance"], 7), (["tenant_admin"], ""), (["admin"], 7)]
)
async def test_an_empty_or_non_string_tenant_claim_is_refused(roles: list[str], claim: object) -> None:
    """Where the claim would scope the token (finance, tenant_admin) an empty one is a 401, as a
    non-string one is for every role."""
    verifier = AdminTokenVerifier(AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE))
    with pytest.raises(GatewayError) as caught:
        await verifier.verify(hs256(claims(roles=roles, tenant_id=claim)))
    assert (caught.value.status, caught.value.code) == (401, "invalid_token")


async def test_an_empty_tenant_claim_on_an_admin_token_is_ignored() -> None:
    """An admin reaches every tenant whatever the claim says; an empty one (some IdPs send "") is no claim."""
    verifier = AdminTokenVerifier(AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE))
    principal = await verifier.verify(hs256(claims(roles=["admin"], tenant_id="")))
    assert principal == AdminPrincipal(subject=principal.subject, roles=frozenset({"admin"}), tenant_id=None)
    assert principal.unscoped and principal.grants(Permission.POLICY_WRITE, "ten_2")
