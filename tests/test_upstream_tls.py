"""VOXGATE_UPSTREAM_CA_FILE and the causes of a failed upstream connect (issue 13, item 6).

The upstream is the real emulator behind a TLS front whose certificate a per-test CA signed.
Every kind of upstream connection is exercised: the fast relay's own upgrade (`/v1/realtime`),
the `websockets` client (GPT-Live's `/v1/live/sessions`) and the httpx pool (client secrets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.settings import Settings, SettingsError, UpstreamSettings
from gateway.upstream_tls import FailureLog, client_context, describe_failure
from tests.conftest import REDIS_URL
from tests.support.harness import Gateway, TenantKey, gateway_settings, start_gateway
from tests.support.tls_ca import TestCa, TlsFront

pytestmark = pytest.mark.e2e


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}"}


async def refused(url: str, tenant: TenantKey) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, additional_headers=auth(tenant), open_timeout=15):
            pass
    response = info.value.response
    error: dict[str, Any] = json.loads(response.body)["error"]
    assert sorted(error) == ["code", "message", "param", "type"]  # OpenAI's error shape
    return response.status_code, error


def failures(text: str, cause: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'voxgate_upstream_connect_failures_total{{cause="{cause}"}} '):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no failure counter for {cause}")


async def scrape(gateway: Gateway) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{gateway.server.http_url}/metrics")).text


@pytest.fixture
async def private_upstream(tmp_path: Path, emulator) -> AsyncIterator[tuple[TestCa, TlsFront]]:
    """The emulator behind TLS, with a certificate for 127.0.0.1 from a CA nothing trusts by default."""
    ca = TestCa(tmp_path / "ca")
    front = await TlsFront(ca.issue("127.0.0.1", "localhost"), emulator.port).start()
    yield ca, front
    await front.stop()


async def gateway_to(pg_dsn: str, url: str, **upstream: Any) -> Gateway:
    settings = gateway_settings(pg_dsn, REDIS_URL, url)
    return await start_gateway(replace(settings, upstream=replace(settings.upstream, **upstream)))


async def test_with_the_ca_file_every_upstream_path_verifies_the_private_upstream(
    pg_dsn: str, private_upstream: tuple[TestCa, TlsFront], tenant: TenantKey
) -> None:
    ca, front = private_upstream
    gateway = await gateway_to(pg_dsn, f"https://127.0.0.1:{front.port}/v1", ca_file=ca.ca_file)
    try:
        # The fast relay's own upgrade.
        async with websockets.connect(f"{gateway.ws_url}?model=gpt-realtime", additional_headers=auth(tenant)) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        # The httpx pool (client secrets).
        async with httpx.AsyncClient(timeout=15) as http:
            minted = await http.post(
                f"{gateway.base_url}/realtime/client_secrets",
                json={"session": {"type": "realtime", "model": "gpt-realtime"}},
                headers=auth(tenant),
            )
        assert minted.status_code == 200, minted.text
        assert minted.json()["value"].startswith("ek_")
        # The websockets client (GPT-Live opens its upstream before the upgrade).
        live = f"ws://{gateway.server.host}:{gateway.server.port}/v1/live/sessions"
        async with websockets.connect(live, additional_headers=auth(tenant), open_timeout=15) as ws:
            assert ws.response is not None and ws.response.status_code == 101
    finally:
        await gateway.stop()


async def test_without_the_ca_file_each_path_refuses_naming_the_certificate(
    pg_dsn: str, private_upstream: tuple[TestCa, TlsFront], tenant: TenantKey
) -> None:
    _, front = private_upstream
    gateway = await gateway_to(pg_dsn, f"https://127.0.0.1:{front.port}/v1")
    try:
        before = failures(await scrape(gateway), "certificate")
        status, error = await refused(f"{gateway.ws_url}?model=gpt-realtime", tenant)
        assert (status, error["code"]) == (502, "upstream_unreachable")  # docs/close-codes.md, as before
        assert "certificate verify failed" in error["message"]
        assert "unable to get local issuer certificate" in error["message"]  # OpenSSL's verify message
        live = f"ws://{gateway.server.host}:{gateway.server.port}/v1/live/sessions"
        status, error = await refused(live, tenant)
        assert (status, error["code"]) == (502, "upstream_unreachable")
        assert "certificate verify failed" in error["message"]
        async with httpx.AsyncClient(timeout=15) as http:
            minted = await http.post(
                f"{gateway.base_url}/realtime/client_secrets",
                json={"session": {"type": "realtime", "model": "gpt-realtime"}},
                headers=auth(tenant),
            )
        assert minted.status_code == 502
        assert minted.json()["error"]["code"] == "upstream_unreachable"
        assert "certificate verify failed" in minted.json()["error"]["message"]
        assert failures(await scrape(gateway), "certificate") == before + 3
    finally:
        await gateway.stop()


async def test_a_certificate_for_another_name_is_reported_as_a_name_mismatch(
    pg_dsn: str, tmp_path: Path, emulator, tenant: TenantKey
) -> None:
    ca = TestCa(tmp_path / "ca")
    front = await TlsFront(ca.issue("upstream.example.invalid"), emulator.port).start()
    gateway = await gateway_to(pg_dsn, f"https://127.0.0.1:{front.port}/v1", ca_file=ca.ca_file)
    try:
        before = failures(await scrape(gateway), "hostname_mismatch")
        status, error = await refused(f"{gateway.ws_url}?model=gpt-realtime", tenant)
        assert (status, error["code"]) == (502, "upstream_unreachable")
        assert "mismatch" in error["message"] and "127.0.0.1" in error["message"]
        assert failures(await scrape(gateway), "hostname_mismatch") == before + 1
    finally:
        await gateway.stop()
        await front.stop()


async def test_a_tls_handshake_that_never_completes_is_the_retryable_timeout(
    pg_dsn: str, tmp_path: Path, tenant: TenantKey
) -> None:
    ca = TestCa(tmp_path / "ca")
    silent = await TlsFront(ca.issue("127.0.0.1"), None).start()  # accepts TCP, never answers the hello
    gateway = await gateway_to(
        pg_dsn, f"https://127.0.0.1:{silent.port}/v1", ca_file=ca.ca_file, connect_timeout_seconds=0.5
    )
    try:
        before = failures(await scrape(gateway), "timeout")
        status, error = await refused(f"{gateway.ws_url}?model=gpt-realtime", tenant)
        assert (status, error["code"]) == (503, "upstream_timeout")
        assert "Timed out" in error["message"]
        assert failures(await scrape(gateway), "timeout") == before + 1
    finally:
        await gateway.stop()
        await silent.stop()


async def test_a_closed_port_is_reported_as_connection_refused(pg_dsn: str, tenant: TenantKey) -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()  # nothing listens there now
    gateway = await gateway_to(pg_dsn, f"https://127.0.0.1:{port}/v1")
    try:
        status, error = await refused(f"{gateway.ws_url}?model=gpt-realtime", tenant)
        assert (status, error["code"]) == (502, "upstream_unreachable")
        assert "connection refused" in error["message"]
    finally:
        await gateway.stop()


async def test_an_upstream_host_that_does_not_resolve_is_reported_as_dns(pg_dsn: str, tenant: TenantKey) -> None:
    gateway = await gateway_to(pg_dsn, "https://voxgate-upstream.invalid/v1")  # RFC 6761: never resolves
    try:
        before = failures(await scrape(gateway), "dns")
        status, error = await refused(f"{gateway.ws_url}?model=gpt-realtime", tenant)
        assert (status, error["code"]) == (502, "upstream_unreachable")
        assert "dns: the upstream host name did not resolve" in error["message"]
        assert failures(await scrape(gateway), "dns") == before + 1
    finally:
        await gateway.stop()


async def test_the_ca_file_is_added_to_the_system_trust_not_substituted(
    tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE stands in for the system store: a server it vouches for still verifies."""
    system, private = TestCa(tmp_path / "system", "system CA"), TestCa(tmp_path / "private", "private CA")
    public_front = await TlsFront(system.issue("127.0.0.1", stem="public"), emulator.port).start()
    private_front = await TlsFront(private.issue("127.0.0.1", stem="private"), emulator.port).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(system.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = client_context(UpstreamSettings(ca_file=private.ca_file))
    assert client_context(UpstreamSettings(ca_file=private.ca_file)) is context  # one per process
    try:
        for front in (public_front, private_front):
            _, writer = await asyncio.open_connection("127.0.0.1", front.port, ssl=context)
            assert writer.get_extra_info("peercert") is not None  # verified
            writer.close()
        # Without the CA file, the private upstream does not verify.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", private_front.port, ssl=ssl.create_default_context())
    finally:
        await public_front.stop()
        await private_front.stop()


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "does not exist"), (b"not a certificate\n", "holds no PEM CA certificate"), (b"", "no PEM")],
)
def test_a_bad_ca_file_is_a_settings_error_naming_the_variable(
    tmp_path: Path, content: bytes | None, needle: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"VOXGATE_UPSTREAM_CA_FILE": str(path)})
    message = str(info.value)
    assert message.startswith("VOXGATE_UPSTREAM_CA_FILE: ") and needle in message and "\n" not in message


async def test_the_failure_is_logged_with_its_cause_once_per_interval(
    tmp_path: Path, emulator, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCa(tmp_path / "ca")
    front = await TlsFront(ca.issue("127.0.0.1"), emulator.port).start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await asyncio.open_connection("127.0.0.1", front.port, ssl=ssl.create_default_context())
    finally:
        await front.stop()
    failure = describe_failure(info.value)
    assert failure.cause == "certificate"
    failures_log = FailureLog()
    with caplog.at_level(logging.WARNING, logger="voxgate.upstream"):
        for _ in range(3):
            failures_log.record(failure, "the upstream Realtime API")
    lines = [r for r in caplog.records if r.name == "voxgate.upstream"]
    assert len(lines) == 1  # the next two fall in the same interval: counted, not logged
    message = lines[0].getMessage()
    assert "connecting to the upstream Realtime API failed: certificate" in message
    assert "unable to get local issuer certificate" in message
    assert lines[0].fields == {"upstream_failure_cause": "certificate"}  # type: ignore[attr-defined]
    assert failures_log.counts["certificate"] == 3
