"""Budget alert signatures are Standard Webhooks signatures, and bad secrets stop the start."""

from __future__ import annotations

import pytest

from gateway.alerts.sender import RETRY_DELAYS_S, retry_at
from gateway.alerts.signing import WebhookSecretError, new_secret, secret_key, sign, verify
from gateway.settings import Settings, SettingsError

# The specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, f"v1,bm9wZQ== {VECTOR_SIGNATURE}")


@pytest.mark.parametrize(
    ("secret", "message_id", "timestamp", "body"),
    [
        (new_secret(), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),  # another key
        (VECTOR_SECRET, "msg_other", VECTOR_TIMESTAMP, VECTOR_BODY),  # another id
        (VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY),  # another time
        (VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, b'{"test": 2432232315}'),  # another body
    ],
)
def test_any_change_breaks_the_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> None:
    assert not verify(secret, message_id, timestamp, body, VECTOR_SIGNATURE)


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="])
def test_secrets_must_be_whsec_base64_of_24_to_64_bytes(secret: str) -> None:
    with pytest.raises(WebhookSecretError) as refused:
        secret_key(secret)
    assert secret.removeprefix("whsec_") not in str(refused.value)


def test_new_secrets_are_valid_and_distinct() -> None:
    assert len(secret_key(new_secret())) == 32
    assert new_secret() != new_secret()


def test_a_webhook_url_needs_a_valid_secret_to_start() -> None:
    url = {"VOXGATE_ALERT_WEBHOOK_URL": "https://hooks.example.com/voxgate"}
    with pytest.raises(SettingsError, match="VOXGATE_ALERT_WEBHOOK_SECRET"):
        Settings.from_env(url)
    with pytest.raises(SettingsError, match="VOXGATE_ALERT_WEBHOOK_SECRET must start with 'whsec_'") as refused:
        Settings.from_env({**url, "VOXGATE_ALERT_WEBHOOK_SECRET": "hunter2-hunter2"})
    assert "hunter2" not in str(refused.value)
    with pytest.raises(SettingsError, match="VOXGATE_ALERT_WEBHOOK_URL"):
        Settings.from_env({"VOXGATE_ALERT_WEBHOOK_URL": "ftp://x", "VOXGATE_ALERT_WEBHOOK_SECRET": VECTOR_SECRET})
    alerts = Settings.from_env({**url, "VOXGATE_ALERT_WEBHOOK_SECRET": VECTOR_SECRET}).alerts
    assert (alerts.webhook_url, alerts.webhook_secret) == (url["VOXGATE_ALERT_WEBHOOK_URL"], VECTOR_SECRET)
    assert VECTOR_SECRET not in repr(alerts)


def test_the_first_retry_comes_within_10_s_and_the_schedule_ends() -> None:
    assert retry_at(1, 1000.0) is not None and retry_at(1, 1000.0) <= 1010.0  # type: ignore[operator]
    assert retry_at(len(RETRY_DELAYS_S), 0.0) == RETRY_DELAYS_S[-1]
    assert retry_at(len(RETRY_DELAYS_S) + 1, 0.0) is None
