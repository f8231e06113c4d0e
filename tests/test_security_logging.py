"""Logs at every level hold no secret and no conversation content, and VOXGATE_LOG_LEVEL works.

The gateway, the emulator, the `openai` SDK and the `websockets` client all log into this
process's root logger at DEBUG; voxgate's own handler (gateway/logs.py) must print none of
the secrets the test knows, while an unfiltered handler next to it shows they were there.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from gateway.logs import configure_logging, redact
from gateway.settings import AdminSettings, LogSettings, Settings, SettingsError
from gateway.telemetry import bind_session, session_fields
from gateway.upstream import open_upstream
from tests.conftest import REDIS_URL
from tests.support.admin_tokens import AUDIENCE, ISSUER, SECRET, admin_token
from tests.support.harness import UPSTREAM_KEY, gateway_settings, make_tenant, start_gateway
from tests.test_demo import free_port

pytestmark = pytest.mark.e2e


class Unfiltered(logging.Handler):
    """Every record as a library logged it (added before voxgate's handler, so it sees them first)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def debug_logs() -> Iterator[tuple[Unfiltered, io.StringIO]]:
    root = logging.getLogger()
    level = root.level
    raw, out = Unfiltered(), io.StringIO()
    root.addHandler(raw)
    handler = configure_logging(LogSettings(level="DEBUG", format="text"), stream=out)
    try:
        yield raw, out
    finally:
        root.removeHandler(handler)
        root.removeHandler(raw)
        root.setLevel(level)


def pieces(secret: str) -> list[str]:
    """The secret and its random parts: a redaction that kept a tail would still leak it."""
    parts = [secret, secret[-16:]]
    if secret.count(".") == 2:  # a JWT: every segment
        parts += [segment for segment in secret.split(".") if len(segment) >= 8]
    return parts


async def test_no_secret_or_conversation_text_reaches_the_log_at_debug(
    pg_dsn: str, emulator, pg_pool, debug_logs: tuple[Unfiltered, io.StringIO]
) -> None:
    raw, out = debug_logs
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    gw = await start_gateway(
        replace(
            settings,
            admin=AdminSettings(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, default_tier=None),
        )
    )
    tenant = await make_tenant(pg_pool)
    said = f"my parcel number is periwinkle-{secrets.token_hex(6)}"
    whispered = f"kiwi{secrets.token_hex(3)}"
    instructions = f"you are a helpful agent called marigold-{secrets.token_hex(6)}"
    token = admin_token()
    try:
        async with AsyncOpenAI(base_url=gw.base_url, api_key=tenant.secret, max_retries=0) as client:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={"type": "realtime", "output_modalities": ["text"], "instructions": instructions}
                )
                said_item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": said}]}
                await conn.conversation.item.create(item=said_item)
                await conn.response.create()
                async with asyncio.timeout(15):
                    async for event in conn:
                        assert event.type != "error", event
                        if event.type == "response.done":
                            break
            minted = await client.realtime.client_secrets.create(
                session={"type": "realtime", "model": "gpt-realtime", "instructions": instructions}
            )
        async with httpx.AsyncClient(base_url=f"{gw.server.http_url}/admin/v1") as http:
            listed = await http.get("/tenants", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200, listed.text
        # A browser passes its key in a subprotocol. `websockets` logs only a frame's first 48
        # characters, so here the text comes first: unfiltered, the log would show it.
        async with websockets.connect(
            f"{gw.ws_url}?model=gpt-realtime", subprotocols=["realtime", f"openai-insecure-api-key.{tenant.secret}"]
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(
                json.dumps(
                    {
                        "item": {
                            "content": [{"text": whispered, "type": "input_text"}],
                            "type": "message",
                            "role": "user",
                        },
                        "type": "conversation.item.create",
                    }
                )
            )
            async with asyncio.timeout(5):
                while not json.loads(await ws.recv())["type"].startswith("conversation.item."):
                    pass
        # The sideband's client: `websockets` with voxgate's upstream key.
        upstream = await open_upstream(gw.settings.upstream, {"model": "gpt-realtime"}, "vg_logtest")
        await upstream.close()
        await gw.settle()
    finally:
        await gw.stop()

    known = {
        "tenant key": tenant.secret,
        "upstream key": UPSTREAM_KEY,
        "admin JWT": token,
        "client secret": minted.value,
        "what the user said": said,
        "session instructions": instructions,
        "what the browser user said": whispered,
    }
    unfiltered = "\n".join(raw.lines)
    # The traffic really was logged, secrets included: without the filter they would be printed.
    assert f"Bearer {UPSTREAM_KEY}" in unfiltered
    assert f"Bearer {tenant.secret}" in unfiltered
    assert f"openai-insecure-api-key.{tenant.secret}" in unfiltered
    assert whispered in unfiltered
    printed = out.getvalue()
    for what, secret in known.items():
        for piece in pieces(secret):
            assert piece not in printed, f"the {what} is in the log"
    assert "DEBUG voxgate.upstream: opening the upstream WebSocket" in printed  # DEBUG survived create_app
    assert "Authorization: [redacted]" in printed  # the client's header line is kept, its value is not
    # Each session's summary line carries its ids and figures, and nothing of the above.
    ended = r"voxgate\.session: session vgs_\w+ ended \(client_closed\) .* session_id=vgs_\w+ "
    summary = ended + rf"tenant_id={tenant.tenant_id} event=session\.summary transport=websocket"
    assert len(re.findall(summary, printed)) == 2


async def test_voxgate_serve_logs_debug_records_as_json_lines_when_asked(pg_dsn: str, emulator) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")},
        "VOXGATE_DATABASE_URL": pg_dsn,
        "VOXGATE_REDIS_URL": REDIS_URL,
        "VOXGATE_REDIS_PREFIX": f"vgtest:{secrets.token_hex(4)}:",
        "VOXGATE_UPSTREAM_URL": emulator.base_url,
        "VOXGATE_OPENAI_API_KEY": UPSTREAM_KEY,
        "VOXGATE_PORT": str(port),
        "VOXGATE_SHUTDOWN_GRACE_SECONDS": "0",
        "VOXGATE_DEFAULT_TIER": "",
        "VOXGATE_CALLS_SCAN_SECONDS": "0",
        "VOXGATE_LOG_LEVEL": "debug",
        "VOXGATE_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("voxgate")), "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            # Served after the app was built: its DEBUG record shows the level held.
            refused = await http.get("/healthz", headers={"X-Padding": "a" * 64 * 1024})
            assert refused.status_code == 431
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, stderr = await proc.communicate()
    lines = [json.loads(line) for line in stderr.decode().splitlines()]  # every line one JSON object
    assert all(set(line) >= {"ts", "level", "logger", "message"} for line in lines)
    debug = [line for line in lines if line["level"] == "DEBUG" and line["logger"].startswith("voxgate.")]
    assert any(line["logger"] == "voxgate.server" and "request head over" in line["message"] for line in debug)
    assert any(line["logger"] == "voxgate.serve" for line in debug)
    assert UPSTREAM_KEY not in stderr.decode()


SECRET_SHAPES = {
    "bearer token": ("Authorization header sent: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
    "upstream key": ("retrying with sk-proj-Zx81QmWv0aL3nT", "Zx81QmWv0aL3nT"),
    "tenant key": ("key vg_live_" + "Q" * 20 + "x7Y_-" + "q" * 18 + " refused", "Q" * 20),
    "client secret": ("minted ek_68a1f0c3b2e4d5f6a7b8c9d0", "68a1f0c3b2e4d5f6a7b8c9d0"),
    "JWT": ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl expired", "c2lnbmF0dXJlLXZhbHVl"),
    "browser subprotocol": (
        "offered: realtime, openai-insecure-api-key.s3cr3tv4lue, openai-beta.realtime-v1",
        "s3cr3tv4lue",
    ),
    "cookie header": ("< Cookie: session=opaque-4f2a; theme=dark", "opaque-4f2a"),
    "authorization in a mapping": ("{'Authorization': 'Token opaque-91c', 'Accept': '*/*'}", "opaque-91c"),
    "authorization in raw headers": ("[(b'authorization', b'Basic dXNlcjpwYXNz')]", "dXNlcjpwYXNz"),
    "password in a DSN": ("connecting to postgresql://voxgate:pa55-w0rd@db:5432/voxgate", "pa55-w0rd"),
    "key in a query string": ("GET /v1/realtime?model=m&api_key=opaque-77e HTTP/1.1", "opaque-77e"),
    "text frame": (
        '> TEXT \'{"type":"conversation.item.create","item":{"content":[{"text":"hi\' [212 bytes]',
        "conversation.item.create",
    ),
    "transcript field": ('event {"type": "x", "transcript": "call me at 555-0100", "delta": "at 555"}', "555"),
}


@pytest.mark.parametrize("shape", list(SECRET_SHAPES))
def test_every_secret_shape_is_redacted(shape: str) -> None:
    line, secret = SECRET_SHAPES[shape]
    redacted = redact(line)
    assert secret not in redacted
    assert "[redacted]" in redacted


def test_redaction_leaves_ordinary_lines_alone() -> None:
    line = (
        "session ses_123 of tenant ten_abc ended (client_closed) after 3 responses; no cookie, no token; "
        "upstream wss://api.openai.com:443/v1/realtime?model=gpt-realtime, redis://cache:6379/0"
    )
    assert redact(line) == line


def test_a_bad_log_level_or_format_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="VOXGATE_LOG_LEVEL"):
        Settings.from_env({"VOXGATE_LOG_LEVEL": "LOUD"})
    with pytest.raises(SettingsError, match="VOXGATE_LOG_FORMAT"):
        Settings.from_env({"VOXGATE_LOG_FORMAT": "xml"})
    assert Settings.from_env({"VOXGATE_LOG_LEVEL": "debug", "VOXGATE_LOG_FORMAT": "JSON"}).log == LogSettings(
        level="DEBUG", format="json"
    )


def test_serve_logs_json_lines_by_default_and_demo_text() -> None:
    assert LogSettings.from_env({}) == LogSettings(level="INFO", format="json")
    assert LogSettings.from_env({}, default_format="text").format == "text"
    assert LogSettings.from_env({"VOXGATE_LOG_FORMAT": "text"}).format == "text"
    assert LogSettings.from_env({"VOXGATE_LOG_FORMAT": "json"}, default_format="text").format == "json"


async def test_lines_about_a_session_carry_its_ids_and_fields_stay_redacted() -> None:
    out = io.StringIO()
    handler = configure_logging(LogSettings(level="INFO", format="json"), stream=out)
    log = logging.getLogger("voxgate.test.session")
    secret = "sk-proj-" + secrets.token_hex(12)

    async def session_task() -> None:
        bind_session("vgs_abc", "ten_xyz")
        log.info("inside the session's task")

        async def effect() -> None:  # a task the session starts inherits the binding
            log.warning("inside a task it started")

        await asyncio.create_task(effect())
        log.info("summary", extra={"fields": {"responses": 2, "note": f"retried with {secret}"}})

    try:
        log.info("before any session")
        await asyncio.create_task(session_task())
        log.info("after it, in another task", extra=session_fields("vgs_cb", "ten_cb"))
        log.info("no session here either")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines if line["logger"] == "voxgate.test.session"}
    for message in ("inside the session's task", "inside a task it started", "summary"):
        assert by_message[message]["session_id"] == "vgs_abc"
        assert by_message[message]["tenant_id"] == "ten_xyz"
    assert by_message["summary"]["responses"] == 2
    assert secret not in out.getvalue()
    assert "sk-[redacted]" in by_message["summary"]["note"]
    assert by_message["after it, in another task"]["session_id"] == "vgs_cb"
    for message in ("before any session", "no session here either"):
        assert "session_id" not in by_message[message]
        assert "trace_id" not in by_message[message]


def test_text_lines_end_with_the_session_fields() -> None:
    out = io.StringIO()
    handler = configure_logging(LogSettings(level="INFO", format="text"), stream=out)
    try:
        logging.getLogger("voxgate.test.text").info(
            "ended", extra={**session_fields("vgs_t", "ten_t"), "fields": {"end_reason": "client_closed"}}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    assert (
        out.getvalue()
        .rstrip()
        .endswith("voxgate.test.text: ended session_id=vgs_t tenant_id=ten_t end_reason=client_closed")
    )
