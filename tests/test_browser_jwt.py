"""Issue 5 §1: browser JWTs a tenant's backend signs, and the attacks voxgate must refuse."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import cli
from gateway.auth.browser import NO_KEY_MESSAGE, BrowserTokenVerifier
from gateway.auth.browser_keys import (
    MAX_PREVIOUS_VALID_SECONDS,
    BrowserAuthConfig,
    BrowserAuthConfigError,
    BrowserAuthStore,
    BrowserKeyChanges,
    PreviousSecret,
    previous_secret_after,
    validate_previous_valid_seconds,
)
from gateway.errors import GatewayError
from gateway.settings import SecuritySettings
from gateway.storage.policy_store import audit_entries
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import handmade
from tests.support.clock import FakeClock
from tests.support.harness import TenantKey, gateway_settings, make_tenant, start_gateway
from tests.support.jwks_server import JwksServer, public_jwk

pytestmark = pytest.mark.e2e

# The test JWKS server listens on 127.0.0.1: only an operator's allowlist lets voxgate fetch there.
JWKS_HOSTS = frozenset({"127.0.0.1"})
HS_SECRET = secrets.token_urlsafe(40)
ROTATED_SECRET = secrets.token_urlsafe(40)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    document = {
        "keys": [public_jwk(RSA_KEY.public_key(), "rsa-1", "RS256"), public_jwk(EC_KEY.public_key(), "ec-1", "ES256")]
    }
    with JwksServer(document) as server:
        yield server.url


@pytest.fixture(scope="module")
async def gateway(pg_dsn: str, emulator: Any) -> Any:
    """A gateway whose operator allowed the loopback JWKS host (VOXGATE_JWKS_ALLOWED_HOSTS)."""
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    gw = await start_gateway(replace(settings, security=SecuritySettings(jwks_allowed_hosts=JWKS_HOSTS)))
    yield gw
    await gw.stop()


def claims(tenant_id: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"tenant_id": tenant_id, "sub": "end-user-7", "aud": "voxgate", "iat": now, "exp": now + 300, **extra}


def hs(payload: dict[str, Any], secret: str = HS_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def rs(payload: dict[str, Any], kid: str = "rsa-1") -> str:
    return jwt.encode(payload, RSA_KEY, algorithm="RS256", headers={"kid": kid})


def es(payload: dict[str, Any], kid: str = "ec-1") -> str:
    return jwt.encode(payload, EC_KEY, algorithm="ES256", headers={"kid": kid})


@pytest.fixture
async def hs_tenant(pg_pool: asyncpg.Pool) -> TenantKey:
    tenant = await make_tenant(pg_pool, "hs")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    return tenant


@pytest.fixture
async def jwks_tenant(pg_pool: asyncpg.Pool, jwks_url: str) -> TenantKey:
    tenant = await make_tenant(pg_pool, "jwks")
    await BrowserAuthStore(pg_pool).set(
        BrowserAuthConfig(tenant.tenant_id, jwks_url=jwks_url, audience="acme-voice"), jwks_allowed_hosts=JWKS_HOSTS
    )
    return tenant


async def probe(gateway, token: str) -> httpx.Response:
    """A route that accepts browser tokens: 404 for an unknown call means the token was accepted."""
    async with httpx.AsyncClient() as http:
        url = f"{gateway.base_url}/realtime/calls/rtc_nope"
        return await http.get(url, headers={"Authorization": f"Bearer {token}"})


async def assert_refused(gateway, token: str, fragment: str = "") -> None:
    response = await probe(gateway, token)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_token"
    assert error["type"] == "invalid_request_error"
    assert fragment.lower() in error["message"].lower()
    assert token not in response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


# -- accepted -------------------------------------------------------------------------------


async def test_hs256_token_is_accepted(gateway, hs_tenant) -> None:
    response = await probe(gateway, hs(claims(hs_tenant.tenant_id)))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "call_not_found"


@pytest.mark.parametrize("sign", [rs, es], ids=["RS256", "ES256"])
async def test_jwks_tokens_are_accepted(gateway, jwks_tenant, sign) -> None:
    response = await probe(gateway, sign(claims(jwks_tenant.tenant_id, aud="acme-voice")))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "call_not_found"


async def test_subject_becomes_the_safety_identifier(pg_pool, hs_tenant) -> None:
    principal = await BrowserTokenVerifier(BrowserAuthStore(pg_pool)).verify(hs(claims(hs_tenant.tenant_id)))
    assert principal.tenant_id == hs_tenant.tenant_id
    assert principal.subject == "end-user-7"


# -- the attack matrix ----------------------------------------------------------------------


async def test_expired_token(gateway, hs_tenant) -> None:
    now = int(time.time())
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, iat=now - 900, exp=now - 120)), "expired")


async def test_forged_signature(gateway, hs_tenant) -> None:
    # The same words as for an unknown tenant: a caller without a key learns nothing about the keys.
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id), secrets.token_urlsafe(40)), NO_KEY_MESSAGE)


async def test_tampered_payload(gateway, hs_tenant) -> None:
    header, _, signature = hs(claims(hs_tenant.tenant_id)).split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims(hs_tenant.tenant_id, sub="admin")).encode())
    await assert_refused(gateway, f"{header}.{forged_payload.decode()}.{signature}", NO_KEY_MESSAGE)


async def test_wrong_audience(gateway, hs_tenant, jwks_tenant) -> None:
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, aud="someone-else")), "audience")
    # The JWKS tenant registered its own audience; the default one is not accepted for it.
    await assert_refused(gateway, rs(claims(jwks_tenant.tenant_id)), "audience")


async def test_alg_none(gateway, hs_tenant) -> None:
    for alg in ("none", "None", "NONE"):
        await assert_refused(
            gateway, handmade({"alg": alg, "typ": "JWT"}, claims(hs_tenant.tenant_id), None), NO_KEY_MESSAGE
        )


async def test_key_confusion_public_key_as_hmac_secret(gateway, jwks_tenant) -> None:
    # The classic attack: HS256 "signed" with the RSA public key the verifier trusts.
    token = handmade(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(jwks_tenant.tenant_id, aud="acme-voice"), RSA_PUBLIC_PEM
    )
    await assert_refused(gateway, token, NO_KEY_MESSAGE)


async def test_asymmetric_alg_for_an_hs256_only_tenant(gateway, hs_tenant) -> None:
    await assert_refused(gateway, rs(claims(hs_tenant.tenant_id)), NO_KEY_MESSAGE)


async def test_unknown_kid(gateway, jwks_tenant) -> None:
    await assert_refused(gateway, rs(claims(jwks_tenant.tenant_id, aud="acme-voice"), kid="rsa-9"), "key")


async def test_kid_of_the_other_algorithm(gateway, jwks_tenant) -> None:
    # An RS256 header pointing at the EC key: the JWK's algorithm must match the header's.
    await assert_refused(gateway, rs(claims(jwks_tenant.tenant_id, aud="acme-voice"), kid="ec-1"))


async def test_long_lived_tokens(gateway, hs_tenant) -> None:
    now = int(time.time())
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, exp=now + 3600)), "too long")
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, exp=now + 16 * 60)), "too long")
    # A token minted long ago whose exp is near is still refused if it was issued for longer.
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, iat=now - 3000, exp=now + 60)), "too long")


@pytest.mark.parametrize("missing", ["exp", "sub", "aud", "tenant_id"])
async def test_required_claims(gateway, hs_tenant, missing) -> None:
    payload = claims(hs_tenant.tenant_id)
    del payload[missing]
    await assert_refused(gateway, hs(payload), "")


async def test_token_for_another_tenant(gateway, hs_tenant, pg_pool) -> None:
    other = await make_tenant(pg_pool, "other")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(other.tenant_id, hs256_secret=secrets.token_urlsafe(40)))
    # Signed with hs_tenant's secret but naming the other tenant: the other tenant's key decides.
    await assert_refused(gateway, hs(claims(other.tenant_id)), NO_KEY_MESSAGE)


async def test_unknown_disabled_and_unconfigured_tenants_look_alike(gateway, hs_tenant, pg_pool) -> None:
    bare = await make_tenant(pg_pool, "bare")
    await assert_refused(gateway, hs(claims("ten_doesnotexist000")), "no trusted key")
    await assert_refused(gateway, hs(claims(bare.tenant_id)), "no trusted key")
    disabled = await make_tenant(pg_pool, "off")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(disabled.tenant_id, hs256_secret=HS_SECRET))
    await pg_pool.execute("UPDATE tenants SET disabled_at = now() WHERE id = $1", disabled.tenant_id)
    await assert_refused(gateway, hs(claims(disabled.tenant_id)), "no trusted key")


async def test_garbage_tokens(gateway) -> None:
    for token in ("eyJ.eyJ.x", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln"):
        await assert_refused(gateway, token, "")


async def test_verifier_refuses_alg_none_without_a_gateway(pg_pool, hs_tenant) -> None:
    verifier = BrowserTokenVerifier(BrowserAuthStore(pg_pool))
    with pytest.raises(GatewayError) as caught:
        await verifier.verify(handmade({"alg": "none"}, claims(hs_tenant.tenant_id), None))
    assert caught.value.status == 401


# -- rotation: the previous HS256 secret and its overlap window ------------------------------

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
A, B, C = "a" * 40, "b" * 40, "c" * 40


def open_until(seconds: int) -> PreviousSecret:
    return PreviousSecret(A, NOW + timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("current", "previous", "new", "window", "expected"),
    [
        # A change keeps the replaced secret for the window: 900 s by default, 0 is a hard cut-over.
        (A, None, B, None, PreviousSecret(A, NOW + timedelta(seconds=900))),
        (A, None, B, 30, PreviousSecret(A, NOW + timedelta(seconds=30))),
        (A, None, B, 0, None),
        (A, None, None, None, PreviousSecret(A, NOW + timedelta(seconds=900))),  # to JWKS only
        (None, None, B, None, None),  # the first secret replaces none
        (B, PreviousSecret(C, NOW + timedelta(seconds=600)), A, 60, PreviousSecret(B, NOW + timedelta(seconds=60))),
        # The same secret again: the open window stays, can only shrink, and 0 closes it.
        (A, None, A, None, None),
        (B, open_until(600), B, None, open_until(600)),
        (B, open_until(600), B, 60, open_until(60)),
        (B, open_until(600), B, 3600, open_until(600)),
        (B, open_until(600), B, 0, None),
        (None, open_until(600), None, None, open_until(600)),  # JWKS only, set again
        # A closed window is gone; a secret is never its own previous one.
        (B, open_until(0), B, None, None),
        (None, open_until(600), A, None, None),
    ],
)
def test_which_previous_secret_stays_valid(current, previous, new, window, expected) -> None:
    assert previous_secret_after(current, previous, new, window, NOW) == expected


async def test_a_cached_config_never_stretches_the_window(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "rot")
    store = BrowserAuthStore(pg_pool)
    await store.set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    previous = await store.set(
        BrowserAuthConfig(tenant.tenant_id, hs256_secret=ROTATED_SECRET), previous_valid_seconds=5
    )
    assert previous is not None and previous.secret == HS_SECRET
    verifier = BrowserTokenVerifier(store, cache_seconds=60)
    now = time.time()
    old_token, new_token = hs(claims(tenant.tenant_id)), hs(claims(tenant.tenant_id), ROTATED_SECRET)
    assert (await verifier.verify(old_token, now)).subject == "end-user-7"
    # Still within the cache (60 s) but past the 5 s window: only the current secret is accepted.
    with pytest.raises(GatewayError) as refused:
        await verifier.verify(old_token, now + 6)
    assert (refused.value.status, refused.value.message) == (401, NO_KEY_MESSAGE)
    assert (await verifier.verify(new_token, now + 6)).subject == "end-user-7"


async def test_a_change_published_in_this_process_drops_cached_keys_at_once(pg_pool: asyncpg.Pool) -> None:
    # The admin API publishes through `BrowserKeyChanges`; the WebRTC side subscribes its verifier.
    tenant = await make_tenant(pg_pool, "pub")
    store = BrowserAuthStore(pg_pool)
    await store.set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    verifier = BrowserTokenVerifier(store, cache_seconds=60, clock=FakeClock(start=time.time()))
    changes = BrowserKeyChanges()
    changes.subscribe(lambda _tenant_id: verifier.forget())
    token = hs(claims(tenant.tenant_id))
    assert (await verifier.verify(token)).subject == "end-user-7"
    assert await store.clear(tenant.tenant_id)  # removed, but this verifier has not heard of it
    assert (await verifier.verify(token)).subject == "end-user-7"  # the fake clock stands still: cached
    changes.publish(tenant.tenant_id)
    with pytest.raises(GatewayError) as refused:
        await verifier.verify(token)
    assert (refused.value.status, refused.value.message) == (401, NO_KEY_MESSAGE)


async def test_a_token_refused_by_both_secrets_gets_the_usual_answer(pg_pool: asyncpg.Pool) -> None:
    tenant = await make_tenant(pg_pool, "rot")
    store = BrowserAuthStore(pg_pool)
    await store.set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    await store.set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=ROTATED_SECRET))
    verifier = BrowserTokenVerifier(store)
    now = int(time.time())
    # Signed with the previous secret but expired: the claim checks still apply to it.
    with pytest.raises(GatewayError, match="expired"):
        await verifier.verify(hs(claims(tenant.tenant_id, iat=now - 900, exp=now - 120)))
    with pytest.raises(GatewayError, match=NO_KEY_MESSAGE):
        await verifier.verify(hs(claims(tenant.tenant_id), secrets.token_urlsafe(40)))
    assert await store.clear(tenant.tenant_id)
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM tenant_browser_auth WHERE tenant_id = $1", tenant.tenant_id) == 0
    )


def test_the_window_is_checked_where_keys_are_stored() -> None:
    for window in (-1, MAX_PREVIOUS_VALID_SECONDS + 1):
        with pytest.raises(BrowserAuthConfigError):
            validate_previous_valid_seconds(window)
    validate_previous_valid_seconds(MAX_PREVIOUS_VALID_SECONDS)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        BrowserAuthConfig("ten_x"),
        BrowserAuthConfig("ten_x", hs256_secret="short"),
        BrowserAuthConfig("ten_x", jwks_url="http://idp.example.com/jwks.json"),
        BrowserAuthConfig("ten_x", jwks_url="ftp://idp.example.com/jwks.json"),
        BrowserAuthConfig("ten_x", hs256_secret=HS_SECRET, audience=""),
    ],
)
def test_bad_configs_are_refused(config: BrowserAuthConfig) -> None:
    with pytest.raises(BrowserAuthConfigError):
        config.validate()


def test_secret_is_never_in_repr() -> None:
    assert HS_SECRET not in repr(BrowserAuthConfig("ten_x", hs256_secret=HS_SECRET))


def test_cli_sets_and_clears_browser_keys(pg_dsn, monkeypatch, tmp_path, capsys) -> None:
    import asyncio

    monkeypatch.setenv("VOXGATE_DATABASE_URL", pg_dsn)
    assert cli.main(["tenant", "create", f"cli-jwt-{secrets.token_hex(3)}", "--json"]) == 0
    tenant_id = json.loads(capsys.readouterr().out)["id"]
    secret_file = tmp_path / "secret"
    secret_file.write_text(HS_SECRET + "\n")
    rotated_file = tmp_path / "rotated"
    rotated_file.write_text(ROTATED_SECRET)
    assert (
        cli.main(["tenant", "jwt", tenant_id, "--hs256-secret-file", str(secret_file), "--audience", "acme", "--json"])
        == 0
    )
    out = capsys.readouterr().out
    assert HS_SECRET not in out
    assert json.loads(out) == {
        "tenant_id": tenant_id,
        "hs256": True,
        "jwks_url": None,
        "audience": "acme",
        "previous_hs256_key_id": None,
        "previous_valid_until": None,
    }

    async def stored() -> BrowserAuthConfig | None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            return await BrowserAuthStore(pool).get(tenant_id)
        finally:
            await pool.close()

    async def key_ids() -> tuple[str, str | None]:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            row = await pool.fetchrow(
                "SELECT hs256_key_id, hs256_previous_key_id FROM tenant_browser_auth WHERE tenant_id = $1", tenant_id
            )
            return row["hs256_key_id"], row["hs256_previous_key_id"]
        finally:
            await pool.close()

    config = asyncio.run(stored())
    assert config is not None
    assert (config.hs256_secret, config.audience) == (HS_SECRET, "acme")
    short = tmp_path / "short"
    short.write_text("too-short")
    assert cli.main(["tenant", "jwt", tenant_id, "--hs256-secret-file", str(short)]) == 2
    assert cli.main(["tenant", "jwt", tenant_id]) == 2  # nothing to set
    for window in ("-1", "3601"):
        assert (
            cli.main(
                [
                    "tenant",
                    "jwt",
                    tenant_id,
                    "--hs256-secret-file",
                    str(rotated_file),
                    "--previous-valid-seconds",
                    window,
                ]
            )
            == 2
        )
    with pytest.raises(SystemExit) as not_a_number:  # argparse's own refusal
        cli.main(
            ["tenant", "jwt", tenant_id, "--hs256-secret-file", str(rotated_file), "--previous-valid-seconds", "soon"]
        )
    assert not_a_number.value.code == 2
    assert cli.main(["tenant", "jwt", tenant_id, "--clear", "--previous-valid-seconds", "5"]) == 2
    capsys.readouterr()
    assert asyncio.run(stored()) == config  # nothing invalid was stored

    # Rotation: the replaced secret stays valid for the window given (its random key id is shown, never it).
    first_id = asyncio.run(key_ids())[0]
    assert (
        cli.main(
            [
                "tenant",
                "jwt",
                tenant_id,
                "--hs256-secret-file",
                str(rotated_file),
                "--audience",
                "acme",
                "--previous-valid-seconds",
                "120",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert HS_SECRET not in out and ROTATED_SECRET not in out
    summary = json.loads(out)
    assert summary["previous_hs256_key_id"] == first_id
    assert re.fullmatch(r"hsk_[a-z2-7]{16}", first_id) and hashlib.sha256(HS_SECRET.encode()).hexdigest()[:8] not in out
    left = datetime.fromisoformat(summary["previous_valid_until"]) - datetime.now(UTC)
    assert 100 < left.total_seconds() <= 121
    assert cli.main(["tenant", "jwt", tenant_id, "--hs256-secret-file", str(rotated_file), "--audience", "acme"]) == 0
    assert "stays valid until" in capsys.readouterr().out  # the same secret again keeps the window
    assert cli.main(["tenant", "jwt", "ten_doesnotexist000", "--jwks-url", "https://idp/jwks"]) == 1
    capsys.readouterr()
    assert cli.main(["tenant", "jwt", tenant_id, "--clear"]) == 0
    assert asyncio.run(stored()) is None

    async def audited() -> list[tuple[str, str, dict[str, Any]]]:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            entries = reversed(await audit_entries(pool, tenant_id))
            return [(e.actor, e.action, e.detail) for e in entries if e.action.startswith("browser_auth.")]
        finally:
            await pool.close()

    # The same audit rows as the admin API, with key ids and never the secret.
    assert [(actor, action) for actor, action, _ in asyncio.run(audited())] == [
        ("cli", "browser_auth.set"),
        ("cli", "browser_auth.set"),
        ("cli", "browser_auth.set"),
        ("cli", "browser_auth.delete"),
    ]
    rotation = asyncio.run(audited())[1][2]
    assert rotation["previous_hs256_key_id"] == summary["previous_hs256_key_id"]
    assert datetime.fromisoformat(rotation["previous_valid_until"]) == datetime.fromisoformat(
        summary["previous_valid_until"]
    )
    assert HS_SECRET not in str(asyncio.run(audited()))
    assert ROTATED_SECRET not in str(asyncio.run(audited()))


async def test_lifetime_bounds_are_exactly_the_documented_ones(gateway, hs_tenant) -> None:
    # docs/webrtc.md: `exp` at most 15 minutes ahead plus 30 s of leeway; with `iat`, `exp - iat` at
    # most 15 minutes. Each case sits 10-15 s inside or outside its bound (far more than a request takes).
    now = int(time.time())
    no_iat = claims(hs_tenant.tenant_id, exp=now + 15 * 60 + 20)
    del no_iat["iat"]
    accepted = await probe(gateway, hs(no_iat))
    assert (accepted.status_code, accepted.json()["error"]["code"]) == (404, "call_not_found")
    too_far = claims(hs_tenant.tenant_id, exp=now + 15 * 60 + 45)
    del too_far["iat"]
    await assert_refused(gateway, hs(too_far), "too long")
    exactly = await probe(gateway, hs(claims(hs_tenant.tenant_id, iat=now - 10, exp=now - 10 + 15 * 60)))
    assert exactly.status_code == 404
    await assert_refused(gateway, hs(claims(hs_tenant.tenant_id, iat=now - 10, exp=now + 15 * 60)), "too long")
