"""`voxgate demo` — the README's first command — on embedded Postgres and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import jwt
import pytest
from openai import AsyncOpenAI

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_demo_serves_a_metered_turn_with_nothing_configured(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    voxgate = Path(sys.executable).with_name("voxgate")
    proc = await asyncio.create_subprocess_exec(
        str(voxgate),
        "demo",
        "--port",
        str(port),
        "--home",
        str(tmp_path / "home"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(60):
            while b"Ctrl-C stops the demo" not in output:
                line = await proc.stdout.readline()
                assert line, output.decode(errors="replace")
                output += line
        text = output.decode()
        key = re.search(r"API key : (vg_live_\S+)", text)
        assert key is not None, text
        assert f"http://127.0.0.1:{port}/v1" in text
        await _check_browser_page(text, port)
        await _check_live_snippet(text, port)

        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1))
        try:
            async with client.realtime.connect(model="gpt-realtime-2") as conn:
                await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
                await conn.conversation.item.create(
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
                )
                await conn.response.create()
                async with asyncio.timeout(15):
                    async for event in conn:
                        assert event.type != "error"
                        if event.type == "response.done":
                            assert event.response.usage is not None
                            assert event.response.usage.total_tokens > 0
                            break
        finally:
            await client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest, _ = await proc.communicate()
    assert proc.returncode == 0, (output + rest).decode(errors="replace")
    assert b"Traceback" not in output + rest


async def _check_browser_page(banner: str, port: int) -> None:
    """The banner's page URL serves the page, and its token endpoint mints tokens voxgate accepts."""
    tenant_id = re.search(r"tenant  : demo \((ten_\w+)\)", banner)
    assert tenant_id is not None, banner
    assert f"http://127.0.0.1:{port}/demo/" in banner
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        page = await http.get("/demo/")
        script = await http.get("/demo/demo.js")
        token = (await http.post("/demo/token")).json()["token"]
        lookup = await http.get("/v1/realtime/calls/rtc_none", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and "/demo/demo.js" in page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"  # once (it was there twice)
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert jwt.decode(token, options={"verify_signature": False})["tenant_id"] == tenant_id.group(1)
    assert lookup.status_code == 404, lookup.text  # the token is good: a bad one would get 401 invalid_token


async def _check_live_snippet(banner: str, port: int) -> None:
    """Next to the Realtime snippet, a GPT-Live one: `client.live.connect()` with voxgate as base_url,
    which runs as printed (the demo tenant's policy allows its model: before, it was refused 4010)."""
    start = banner.index("GPT-Live goes through the same base_url")
    snippet = textwrap.dedent(banner[banner.index("\n", start) : banner.index("asyncio.run(live())")])
    assert f'AsyncOpenAI(base_url="http://127.0.0.1:{port}/v1"' in snippet
    assert "client.live.connect()" in snippet and "conn.session.start(" in snippet
    namespace: dict[str, object] = {"AsyncOpenAI": AsyncOpenAI}
    exec(compile(snippet, "live-snippet", "exec"), namespace)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        async with asyncio.timeout(20):
            await namespace["live"]()  # type: ignore[operator]
    assert re.fullmatch(r"billed seconds: \d+(\.\d+)?\n", printed.getvalue()), printed.getvalue()
