"""Issue S §4 and §9: what a WebSocket client's handshake may carry upstream.

The upstream query is built from an allowlist (`model`, `intent`), so a differently cased
`CALL_ID`, an `api_key` or any other parameter is a 400 before the upgrade and never reaches
upstream; `OpenAI-Beta` passes only as `realtime=v1`; the end user's name hashes the same
(UTF-8) on the WebSocket and over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support.harness import TenantKey

pytestmark = pytest.mark.e2e


def auth(tenant: TenantKey, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}", **extra}


async def refused(gateway: Any, query: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"{gateway.ws_url}?{query}", additional_headers=headers, compression=None):
            pass
    response = info.value.response
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return response.status_code, error


async def test_upstream_sees_exactly_the_allowlisted_query(gateway, emulator, tenant) -> None:
    before = len(emulator.sessions)
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime&intent=realtime", additional_headers=auth(tenant), compression=None
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert len(emulator.sessions) == before + 1
    assert emulator.sessions[-1].query == {"model": "gpt-realtime", "intent": "realtime"}


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("model=gpt-realtime&CALL_ID=rtc_0123", "unknown_parameter", "CALL_ID"),  # case does not bypass
        ("model=gpt-realtime&call_id=rtc_0123", "unsupported_parameter", "call_id"),
        ("model=gpt-realtime&api_key=sk-stolen", "unknown_parameter", "api_key"),
        ("model=gpt-realtime&Model=gpt-realtime-mini", "unknown_parameter", "Model"),
        ("model=gpt-realtime&model=gpt-realtime-mini", "duplicate_parameter", "model"),
        ("intent=translation", "invalid_value", "intent"),
    ],
)
async def test_other_parameters_are_refused_before_the_upgrade(
    gateway, emulator, tenant, query: str, code: str, param: str
) -> None:
    sessions, refusals = len(emulator.sessions), len(emulator.refused)
    status, error = await refused(gateway, query, auth(tenant))
    assert (status, error["type"], error["code"], error["param"]) == (400, "invalid_request_error", code, param)
    assert "sk-stolen" not in error["message"]
    assert (len(emulator.sessions), len(emulator.refused)) == (sessions, refusals)  # upstream saw nothing


async def test_openai_beta_passes_only_as_realtime_v1(gateway, emulator, tenant) -> None:
    sessions, refusals = len(emulator.sessions), len(emulator.refused)
    status, error = await refused(gateway, "model=gpt-realtime", auth(tenant, **{"OpenAI-Beta": "assistants=v2"}))
    assert (status, error["code"], error["param"]) == (400, "invalid_header", "OpenAI-Beta")
    assert (len(emulator.sessions), len(emulator.refused)) == (sessions, refusals)
    # `realtime=v1` is passed on as it came: the emulator (GA only) is the one to refuse it.
    status, error = await refused(gateway, "model=gpt-realtime", auth(tenant, **{"OpenAI-Beta": "realtime=v1"}))
    assert len(emulator.refused) == refusals + 1
    assert emulator.refused[-1]["headers"]["openai-beta"] == "realtime=v1"


async def test_the_end_user_hashes_as_utf8_on_both_transports(gateway, emulator, tenant) -> None:
    name = "Zoë Ångström"
    async with websockets.connect(
        f"{gateway.ws_url}?model=gpt-realtime",
        additional_headers=auth(tenant, **{"X-Voxgate-End-User": name}),
        compression=None,
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    over_websocket = emulator.sessions[-1].headers["openai-safety-identifier"]
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            f"{gateway.base_url}/realtime/client_secrets",
            json={"session": {"type": "realtime"}},
            headers=[("Authorization", f"Bearer {tenant.secret}"), ("X-Voxgate-End-User", name.encode("utf-8"))],
        )
    assert minted.status_code == 200, minted.text
    over_http = emulator.client_secrets[-1].headers["openai-safety-identifier"]
    secret = gateway.settings.security.safety_identifier_secret
    expected = "vg_" + hmac.new(secret, f"{tenant.tenant_id}\x00{name}".encode(), hashlib.sha256).hexdigest()[:40]
    assert over_websocket == over_http == expected
