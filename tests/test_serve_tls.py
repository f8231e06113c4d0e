"""TLS termination in `voxgate serve` (VOXGATE_TLS_CERT_FILE / VOXGATE_TLS_KEY_FILE), issue 13 item 6.

`voxgate serve` runs as its own process (as in production: uvloop, the CLI's signals); the
client is the real `openai` SDK verifying against a per-test CA, talking to the emulator
through voxgate over https:// and wss://.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import ssl
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.conftest import REDIS_URL
from tests.support.gateway_process import VOXGATE, delete_keys, free_port, gateway_env
from tests.support.harness import UPSTREAM_KEY, TenantKey
from tests.support.tls_ca import Issued, TestCa, peer_serial

pytestmark = pytest.mark.e2e


def trusting(ca: TestCa) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.ca_file))


def install(issued: Issued, cert: Path, key: Path) -> None:
    """Replace the served pair on disk the way a cert manager does: new files renamed into place."""
    for source, target in ((issued.key, key), (issued.cert, cert)):
        staging = target.with_suffix(".new")
        staging.write_bytes(source.read_bytes())
        os.replace(staging, target)


async def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new TLS connection to `port` is given (verified)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        return peer_serial(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()


@asynccontextmanager
async def tls_gateway(
    env: dict[str, str], log: Path, context: ssl.SSLContext
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    port = free_port()
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(VOXGATE), "serve", env={**env, "VOXGATE_PORT": str(port)}, stdout=out, stderr=out
        )
    try:
        async with asyncio.timeout(30), httpx.AsyncClient(verify=context) as http:
            while True:
                assert proc.returncode is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"https://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def text_turn(connection: Any) -> None:
    """One text response over a live SDK connection, to its `response.done`."""
    await connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    )
    await connection.response.create()
    async with asyncio.timeout(15):
        async for event in connection:
            assert event.type != "error", event
            if event.type == "response.done":
                assert event.response.usage is not None and event.response.usage.total_tokens > 0
                return


async def test_the_sdk_talks_wss_through_voxgate_and_a_replaced_certificate_serves_new_connections(
    pg_dsn: str, emulator, tenant: TenantKey, tmp_path: Path
) -> None:
    ca = TestCa(tmp_path / "ca")
    first, second, third = (ca.issue("127.0.0.1", "localhost", stem=f"gen{i}") for i in range(3))
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    install(first, cert, key)
    context = trusting(ca)
    prefix = f"vgtest:{secrets.token_hex(4)}:"
    env = gateway_env(
        pg_dsn,
        REDIS_URL,
        emulator.base_url,
        prefix,
        UPSTREAM_KEY,
        VOXGATE_TLS_CERT_FILE=str(cert),
        VOXGATE_TLS_KEY_FILE=str(key),
    )
    try:
        async with tls_gateway(env, tmp_path / "serve.log", context) as (port, proc):
            assert await served_serial(port, context) == first.serial
            # Plain HTTP on the TLS port is not served.
            with pytest.raises(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=3) as plain:
                    await plain.get(f"http://127.0.0.1:{port}/readyz")
            client = AsyncOpenAI(
                base_url=f"https://127.0.0.1:{port}/v1",
                api_key=tenant.secret,
                max_retries=0,
                http_client=httpx.AsyncClient(verify=context),
            )
            try:
                # HTTPS through the app (client secrets) ...
                secret = await client.realtime.client_secrets.create(
                    session={"type": "realtime", "model": "gpt-realtime"}
                )
                assert secret.value.startswith("ek_")
                # ... and wss:// through the fast relay.
                async with client.realtime.connect(
                    model="gpt-realtime", websocket_connection_options={"ssl": context}
                ) as old:
                    await old.session.update(session={"type": "realtime", "output_modalities": ["text"]})
                    await text_turn(old)

                    install(second, cert, key)  # picked up by the mtime poll (every 5 s)
                    async with asyncio.timeout(15):
                        while await served_serial(port, context) != second.serial:
                            await asyncio.sleep(0.25)
                    # The session opened before the rotation keeps its connection (and certificate).
                    await text_turn(old)
                    ssl_object = old._connection.transport.get_extra_info("ssl_object")
                    assert peer_serial(ssl_object.getpeercert(binary_form=True)) == first.serial
                    # A new SDK session verifies the new certificate and works.
                    async with client.realtime.connect(
                        model="gpt-realtime", websocket_connection_options={"ssl": context}
                    ) as new:
                        await new.session.update(session={"type": "realtime", "output_modalities": ["text"]})
                        await text_turn(new)

                    # A broken pair (key of another certificate) is refused; the last good one stays.
                    (tmp_path / "tls.key.new").write_bytes(first.key.read_bytes())
                    os.replace(tmp_path / "tls.key.new", key)
                    await asyncio.sleep(6)
                    assert await served_serial(port, context) == second.serial
                    await text_turn(old)

                    # SIGHUP reloads at once.
                    install(third, cert, key)
                    proc.send_signal(signal.SIGHUP)
                    async with asyncio.timeout(2):
                        while await served_serial(port, context) != third.serial:
                            await asyncio.sleep(0.05)
            finally:
                await client.close()
        log = (tmp_path / "serve.log").read_text()
        assert "TLS certificate reload failed" in log
    finally:
        await delete_keys(REDIS_URL, prefix)


async def run_serve(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(VOXGATE), "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("case", ["cert_only", "missing_key", "mismatched_key", "garbage_cert", "bad_ca_file"])
async def test_bad_tls_settings_are_one_line_and_exit_2(pg_dsn: str, tmp_path: Path, case: str) -> None:
    ca = TestCa(tmp_path / "ca")
    one, other = ca.issue("127.0.0.1", stem="one"), ca.issue("127.0.0.1", stem="other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    settings = {
        "cert_only": ({"VOXGATE_TLS_CERT_FILE": str(one.cert)}, "VOXGATE_TLS_KEY_FILE is not"),
        "missing_key": (
            {"VOXGATE_TLS_CERT_FILE": str(one.cert), "VOXGATE_TLS_KEY_FILE": str(tmp_path / "absent.key")},
            "does not exist",
        ),
        "mismatched_key": (
            {"VOXGATE_TLS_CERT_FILE": str(one.cert), "VOXGATE_TLS_KEY_FILE": str(other.key)},
            "do not load",
        ),
        "garbage_cert": (
            {"VOXGATE_TLS_CERT_FILE": str(garbage), "VOXGATE_TLS_KEY_FILE": str(one.key)},
            "do not load",
        ),
        "bad_ca_file": ({"VOXGATE_UPSTREAM_CA_FILE": str(tmp_path / "absent-ca.pem")}, "VOXGATE_UPSTREAM_CA_FILE"),
    }
    extra, needle = settings[case]
    env = gateway_env(pg_dsn, REDIS_URL, "http://127.0.0.1:9/v1", "vgtest:unused:", UPSTREAM_KEY, **extra)
    code, stderr = await run_serve({**env, "VOXGATE_PORT": str(free_port())})
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxgate serve: ") and needle in lines[0], stderr


class _SlowDisk(ssl.SSLContext):
    """A context whose files load slowly (a cold or network disk), noting which thread loads them."""

    loaded_on: list[int] = []

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        type(self).loaded_on.append(threading.get_ident())
        time.sleep(0.3)
        super().load_cert_chain(certfile, keyfile, password)


class _SslWithSlowDisk:
    """The `ssl` module as gateway/serving_tls.py sees it, its contexts loading from a slow disk."""

    SSLContext = _SlowDisk

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)


async def test_a_reload_reads_the_files_off_the_event_loop_which_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.serving_tls import ServingTls

    ca = TestCa(tmp_path / "ca")
    first, second = ca.issue("127.0.0.1", stem="first"), ca.issue("127.0.0.1", stem="second")
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    install(first, cert, key)
    tls = ServingTls(cert, key)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await served_serial(port, trusting(ca)) == first.serial
        install(second, cert, key)
        monkeypatch.setattr("gateway.serving_tls.ssl", _SslWithSlowDisk())
        _SlowDisk.loaded_on.clear()
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beating = asyncio.create_task(heartbeat())
        tls.reload_now()  # what SIGHUP calls, on the loop
        for _ in range(300):
            if tls.reloads:
                break
            await asyncio.sleep(0.01)
        beating.cancel()
        monkeypatch.undo()
        assert tls.reloads == 1
        assert _SlowDisk.loaded_on and threading.get_ident() not in _SlowDisk.loaded_on
        assert ticks >= 10  # the loop ran on through the 0.3 s load
        assert await served_serial(port, trusting(ca)) == second.serial
    finally:
        server.close()
        await server.wait_closed()
