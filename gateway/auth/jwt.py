"""Verifying a bearer JWT against the keys one issuer may sign with: shared by admin and browser tokens.

Each key type verifies exactly one algorithm (an explicit allowlist, so a token can never pick
how it is checked): an HS256 secret verifies HS256 only; a PEM public key RS256 (RSA) or
ES256 (P-256); a JWKS URL RS256 / ES256 keys fetched by ``kid`` through `gateway.auth.jwks`.
``exp``/``iat``/``nbf`` must be numbers, and every failure is a 401 ``invalid_token`` whose
message never echoes the token.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.auth.jwks import GuardedJWKClient
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.settings import SettingsError

LEEWAY_SECONDS: Final = 30  # tolerated clock skew for exp/nbf/iat
MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key must be at least 256 bits
ASYMMETRIC_ALGORITHMS: Final = ("RS256", "ES256")
NUMERIC_CLAIMS: Final = ("exp", "iat", "nbf")


def invalid_token(message: str) -> GatewayError:
    return GatewayError(
        401, message, code="invalid_token", headers={"www-authenticate": 'Bearer error="invalid_token"'}
    )


_SAFE_MESSAGES: Final[tuple[tuple[type[jwt.InvalidTokenError], str], ...]] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.InvalidAudienceError, "The token's audience is not accepted."),
    (jwt.InvalidIssuerError, "The token's issuer is not accepted."),
    (jwt.InvalidSignatureError, "The token's signature is invalid."),
    (jwt.ImmatureSignatureError, "The token is not valid yet."),
    (jwt.InvalidAlgorithmError, "The token's algorithm is not accepted."),
    (jwt.DecodeError, "The token is malformed."),
)


# What fails before a signature verified: the answer says nothing about the keys.
_BEFORE_SIGNATURE: Final = (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.DecodeError)


def load_public_key(text: str, setting: str = "VOXGATE_ADMIN_JWT_PUBLIC_KEY") -> tuple[Any, str]:
    """Load a PEM public key (or a file holding one); returns the key and its one algorithm."""
    pem = text if "-----BEGIN" in text else Path(text).read_text(encoding="ascii")
    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except ValueError as exc:
        raise SettingsError(f"{setting} is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise SettingsError(f"{setting} must be an RSA or P-256 EC public key")


class KeySet:
    """The keys one issuer may sign with, and the one algorithm each key type may verify.

    Shared by admin tokens and browser tokens (`gateway.auth.browser`): an HS256 secret,
    a PEM public key (RS256 or ES256, by key type) and/or a JWKS URL (RS256 / ES256 by
    ``kid``). The token's header never picks how it is checked beyond this allowlist, so
    ``alg: none`` and HS256-signed-with-the-public-key tokens find no key.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        public: tuple[Any, str] | None = None,
        jwks_url: str | None = None,
        jwks_allowed_hosts: frozenset[str] = frozenset(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.secret = secret
        self.public = public
        # Every fetch goes through `jwks.fetch_jwks` (address checks, no redirects) and the refetch cooldown.
        self.jwks = GuardedJWKClient(jwks_url, jwks_allowed_hosts, clock=clock) if jwks_url else None

    @property
    def configured(self) -> bool:
        return self.secret is not None or self.public is not None or self.jwks is not None

    async def keys_for(self, token: str, previous_secret: bytes | None = None) -> tuple[list[Any], list[str]]:
        """The keys to try, in order, and the single algorithm to verify `token` with, or a 401.

        `previous_secret` is an HS256 secret a rotation replaced and still accepts (browser
        tokens, `gateway.auth.browser`); it is tried after the current secret.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid_token("The token is malformed.") from None
        alg = header.get("alg")
        if alg == "HS256":
            hs256_keys = [key for key in (self.secret, previous_secret) if key is not None]
            if hs256_keys:
                return hs256_keys, ["HS256"]
        if alg in ASYMMETRIC_ALGORITHMS:
            if self.public is not None and self.public[1] == alg:
                return [self.public[0]], [alg]
            if self.jwks is not None:
                try:
                    # PyJWKClient fetches over blocking HTTP; keep it off the event loop.
                    jwk = await asyncio.to_thread(self.jwks.get_signing_key_from_jwt, token)
                except (jwt.PyJWKClientError, jwt.InvalidTokenError):
                    raise invalid_token("No trusted key matches the token.") from None
                if jwk.algorithm_name != alg:
                    raise invalid_token("The token's algorithm is not accepted.")
                return [jwk], [alg]
        raise invalid_token("The token's algorithm is not accepted.")

    async def decode(
        self,
        token: str,
        *,
        audience: str,
        issuer: str | None,
        required: list[str],
        previous_secret: bytes | None = None,
        no_key_message: str | None = None,
    ) -> dict[str, Any]:
        """Verify signature and registered claims; every failure is a safe 401 ``invalid_token``.

        With `no_key_message`, every failure before a signature verified (no key for the
        algorithm, unknown `kid`, a bad signature) says just that, so the answer cannot tell a
        caller without a key anything about the keys (browser tokens: whether the tenant exists).
        `exp`, `iat` and `nbf` must be numbers (pyjwt alone takes `"exp": "1999999999"`).
        """
        try:
            keys, algorithms = await self.keys_for(token, previous_secret)
        except GatewayError:
            if no_key_message is None:
                raise
            raise invalid_token(no_key_message) from None
        options: dict[str, Any] = {
            "algorithms": algorithms,
            "audience": audience,
            "issuer": issuer,
            "options": {"require": required},
            "leeway": LEEWAY_SECONDS,
        }
        try:
            claims = _decode_with_first_matching_key(token, keys, options)
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"The token lacks the required {exc.claim!r} claim.") from None
        except jwt.InvalidTokenError as exc:
            if no_key_message is not None and isinstance(exc, _BEFORE_SIGNATURE):
                raise invalid_token(no_key_message) from None
            message = next((m for kind, m in _SAFE_MESSAGES if isinstance(exc, kind)), "The token is invalid.")
            raise invalid_token(message) from None
        for name in NUMERIC_CLAIMS:
            value = claims.get(name)
            if name in claims and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise invalid_token(f"The token's {name!r} claim must be a number.")
        return claims


def _decode_with_first_matching_key(token: str, keys: list[Any], options: dict[str, Any]) -> dict[str, Any]:
    """Decode with the first key whose signature matches. pyjwt checks the signature before
    any claim, so only a signature mismatch moves on to the next key."""
    for key in keys[:-1]:
        try:
            claims: dict[str, Any] = jwt.decode(token, key, **options)
        except jwt.InvalidSignatureError:
            continue
        return claims
    last: dict[str, Any] = jwt.decode(token, keys[-1], **options)
    return last
