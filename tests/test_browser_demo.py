"""Issue 5: the demo page places a real WebRTC call from headless Chromium, through voxgate, to the emulator.

Chromium (Debian's package, driven by Playwright) has a fake microphone that plays one
utterance from a WAV file. The page gets a browser JWT from the demo token endpoint, posts
its SDP offer to the SDP broker, and talks to the emulator's aiortc peer over ICE on
loopback. voxgate's sideband monitor meters the call into the ledger.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import httpx
import jwt
import pytest

from gateway.app import create_app, drain
from gateway.auth.browser_keys import MAX_LIFETIME_SECONDS
from gateway.cli.demo_page import DEMO_SUBJECT, DemoPagePlugin, enable_demo_browser_tokens
from gateway.server import start_server
from tests.conftest import REDIS_URL
from tests.support import doc_prices
from tests.support.chromium import chromium_args, find_chromium, write_utterance
from tests.support.harness import UPSTREAM_KEY, Gateway, TenantKey, gateway_settings, make_tenant

pytestmark = pytest.mark.e2e

CALL_SECONDS = 20.0


def unavailable(reason: str) -> NoReturn:
    """Skip, except on CI (`CI` set), which installs chromium (.ci/run) and must never skip this silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


def test_ci_sets_ci_so_a_missing_browser_fails_rather_than_skips() -> None:
    ci_script = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in ci_script
    assert ci_script.index("export CI=true") < ci_script.index("make test")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        unavailable("chromium not installed: apt-get install chromium")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        unavailable("playwright not installed: pip install -e '.[dev]'")
    return path


@pytest.fixture(scope="module")
async def demo_tenant(pg_pool: asyncpg.Pool) -> TenantKey:
    return await make_tenant(pg_pool, "demo")


@pytest.fixture(scope="module")
async def demo_gateway(pg_dsn: str, pg_pool: asyncpg.Pool, emulator, demo_tenant: TenantKey) -> AsyncIterator[Gateway]:
    """A gateway with `voxgate demo`'s page and token endpoint, in front of the shared emulator."""
    signer = await enable_demo_browser_tokens(pg_pool, demo_tenant.tenant_id)
    settings = gateway_settings(pg_dsn, REDIS_URL, emulator.base_url)
    app = create_app(settings, plugins=[DemoPagePlugin(signer)])
    server = await start_server(
        app, ws_max_size=settings.server.max_message_bytes, before_shutdown=lambda: drain(app), realtime_relay=True
    )
    gateway = Gateway(server=server, app=app, settings=settings)
    yield gateway
    await gateway.stop()


@pytest.fixture(scope="module")
async def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    mic = write_utterance(tmp_path_factory.mktemp("mic") / "utterance.wav")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True, args=chromium_args(mic))
        yield launched
        await launched.close()


async def page_state(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate("() => JSON.parse(JSON.stringify(window.voxgateDemo))")
    return state


async def wait_for_state(page: Any, condition: str, seconds: float = CALL_SECONDS) -> dict[str, Any]:
    """Wait until `condition` (JS over `s`, the page's `window.voxgateDemo`) holds; fail with the state."""
    script = f"() => {{ const s = window.voxgateDemo; return s.status === 'error' || ({condition}); }}"
    try:
        await page.wait_for_function(script, timeout=seconds * 1000)
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {condition}: {await page_state(page)}") from exc
    state = await page_state(page)
    assert state["status"] != "error", state
    return state


async def until(predicate: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_a_browser_call_through_voxgate_is_connected_metered_and_hung_up(
    browser: Any, demo_gateway: Gateway, demo_tenant: TenantKey, emulator, pg_pool: asyncpg.Pool
) -> None:
    page = await browser.new_page()
    authorizations: list[str] = []
    page.on("request", lambda r: authorizations.append(r.headers.get("authorization", "")))
    try:
        await page.goto(f"{demo_gateway.server.http_url}/demo/")
        await page.click("#start")

        # ICE connects, the data channel opens and carries the session.
        state = await wait_for_state(page, "s.channel === 'open' && s.events.includes('session.created')")
        assert state["ice"] in ("connected", "completed"), state
        assert state["events"][0] == "session.created"
        call_id = state["callId"]
        assert call_id and call_id.startswith("rtc_")
        upstream = next(c for c in emulator.calls if c.call_id == call_id)
        assert upstream.connection_state == "connected"

        # The fake microphone's utterance is one voice turn: the VAD commits it and a response follows.
        state = await wait_for_state(page, "s.responses.length >= 1")
        events = state["events"]
        assert (
            events.index("input_audio_buffer.speech_started")
            < events.index("input_audio_buffer.committed")
            < events.index("response.done")
        ), events
        assert upstream.peer is not None and upstream.peer.input_ms > 0  # the browser's audio reached upstream
        response_ids = [r["id"] for r in state["responses"]]
        assert all(r["usage"]["total_tokens"] > 0 for r in state["responses"])

        # voxgate knows the call: the page read it, the tenant's backend can read it, the monitor meters it.
        state = await wait_for_state(page, "s.voxgateCall !== null")
        assert (state["voxgateCall"]["id"], state["voxgateCall"]["state"]) == (call_id, "active")
        async with httpx.AsyncClient(base_url=demo_gateway.server.http_url) as http:
            seen = await http.get(
                f"/v1/realtime/calls/{call_id}", headers={"Authorization": f"Bearer {demo_tenant.secret}"}
            )
        assert seen.status_code == 200, seen.text
        assert (seen.json()["source"], seen.json()["state"]) == ("brokered", "active")
        session_id = seen.json()["session_id"]

        async def metered() -> bool:
            rows = await pg_pool.fetch("SELECT response_id FROM usage_ledger WHERE session_id = $1", session_id)
            return len(rows) >= len(response_ids)

        await until(metered)
        await asyncio.sleep(0.3)  # a double count would have landed by now
        rows = await pg_pool.fetch(
            "SELECT response_id, tenant_id, cost_micro_usd FROM usage_ledger WHERE session_id = $1", session_id
        )
        assert sorted(r["response_id"] for r in rows) == sorted(response_ids)  # each response exactly once
        assert all(r["tenant_id"] == demo_tenant.tenant_id for r in rows)
        # Each row costs what the usage the browser saw costs at docs/pricing.md's rates.
        seen_usage = {r["id"]: r["usage"] for r in state["responses"]}
        assert {r["response_id"]: r["cost_micro_usd"] for r in rows} == {
            rid: doc_prices.doc_cost(usage) for rid, usage in seen_usage.items()
        }
        assert all(r["cost_micro_usd"] > 0 for r in rows)

        # Hang-up ends the call at voxgate and upstream, and the browser's connection closes.
        await page.click("#hangup")
        state = await wait_for_state(page, "s.status === 'ended' && s.voxgateCall && s.voxgateCall.state === 'ended'")
        assert state["voxgateCall"]["end_reason"] == "hangup"
        assert state["channel"] == "closed"
        assert upstream.hung_up
        async with asyncio.timeout(5):
            while not upstream.ended:
                await asyncio.sleep(0.02)
        assert await pg_pool.fetchval("SELECT state FROM realtime_calls WHERE call_id = $1", call_id) == "ended"
    finally:
        await page.close()
    # The page only ever sent browser JWTs, never the tenant key or the upstream key.
    sent = [a for a in authorizations if a]
    assert sent, "the page sent no authenticated request"
    for header in sent:
        assert demo_tenant.secret not in header and UPSTREAM_KEY not in header
        assert jwt.decode(header.removeprefix("Bearer "), options={"verify_signature": False})["sub"] == DEMO_SUBJECT


async def test_the_demo_token_is_short_lived_and_the_page_holds_no_key(
    demo_gateway: Gateway, demo_tenant: TenantKey
) -> None:
    async with httpx.AsyncClient(base_url=demo_gateway.server.http_url) as http:
        page = await http.get("/demo/")
        script = await http.get("/demo/demo.js")
        token = await http.post("/demo/token")
        missing = await http.get("/demo/secrets.txt")
        bare = await http.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "oai-events" in script.text
    assert missing.status_code == 404
    assert bare.status_code == 200 and bare.text == page.text
    for body in (page.text, script.text, token.text):
        assert demo_tenant.secret not in body and UPSTREAM_KEY not in body
    claims = jwt.decode(token.json()["token"], options={"verify_signature": False})
    assert (claims["tenant_id"], claims["sub"], claims["aud"]) == (demo_tenant.tenant_id, DEMO_SUBJECT, "voxgate")
    # docs/webrtc.md: the demo token is HS256 and lives 5 minutes (browser tokens may live up to 15).
    assert jwt.get_unverified_header(token.json()["token"])["alg"] == "HS256"
    assert claims["exp"] - claims["iat"] == 5 * 60 <= MAX_LIFETIME_SECONDS
    assert claims["exp"] <= time.time() + 5 * 60


async def test_voxgate_serve_has_no_demo_routes(pg_dsn: str, emulator) -> None:
    app = create_app(gateway_settings(pg_dsn, REDIS_URL, emulator.base_url))  # what `voxgate serve` builds
    assert not [route.path for route in app.routes if route.path.startswith("/demo")]


async def test_the_page_shows_a_live_snippet_next_to_the_realtime_one_and_it_runs(
    browser: Any,
    demo_gateway: Gateway,
    demo_tenant: TenantKey,
    pg_pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The page's GPT-Live snippet names this gateway as `base_url` and, with the demo key, meters a session."""
    page = await browser.new_page()
    try:
        await page.goto(f"{demo_gateway.server.http_url}/demo/")
        realtime = await page.inner_text("#snippet-realtime")
        live = await page.inner_text("#snippet-live")
        await page.wait_for_function("() => window.voxgateDemo.status === 'idle'")
        headings = await page.eval_on_selector_all("h3", "nodes => nodes.map(n => n.textContent)")
    finally:
        await page.close()
    base = f'base_url="{demo_gateway.server.http_url}/v1"'
    assert base in realtime and "client.realtime.connect(" in realtime
    assert base in live and "client.live.connect()" in live and "conn.session.start(" in live
    assert [h.split(" ")[0] for h in headings] == ["Realtime", "GPT-Live"]  # side by side, Realtime first
    for snippet in (realtime, live):
        compile(snippet, "snippet", "exec")  # valid Python as shown
        assert demo_tenant.secret not in snippet and UPSTREAM_KEY not in snippet

    # Run the Live snippet as shown, with the key `voxgate demo` printed in place of the placeholder.
    assert live.count('api_key="VOXGATE_DEMO_API_KEY"') == 1 and live.rstrip().endswith("asyncio.run(live())")
    body = live.replace("VOXGATE_DEMO_API_KEY", demo_tenant.secret).rstrip().removesuffix("asyncio.run(live())")
    before = await pg_pool.fetchval(
        "SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1 AND intent = 'live'", demo_tenant.tenant_id
    )
    namespace: dict[str, Any] = {}
    exec(compile(body, "live-snippet", "exec"), namespace)  # the page's own snippet, as shown
    async with asyncio.timeout(20):
        await namespace["live"]()

    assert "billed seconds:" in capsys.readouterr().out  # the snippet saw its session.closed

    async def recorded() -> bool:
        count = await pg_pool.fetchval(
            "SELECT count(*) FROM realtime_sessions WHERE tenant_id = $1 AND intent = 'live' "
            "AND model = 'gpt-live-1' AND end_reason IS NOT NULL",
            demo_tenant.tenant_id,
        )
        return bool(count == before + 1)

    await until(recorded)  # the gateway admitted, recorded and ended the snippet's session


def test_the_demo_signer_reads_the_injected_clock() -> None:
    from gateway.cli.demo_page import DemoBrowserSigner
    from tests.support.clock import FakeClock

    clock = FakeClock(start=1_800_000_000.0)
    token, expires = DemoBrowserSigner("ten_x", "s" * 48, clock=clock).mint()
    times = {"verify_iat": False, "verify_exp": False}  # the fake clock is not the test's wall clock
    claims = jwt.decode(token, "s" * 48, algorithms=["HS256"], audience="voxgate", options=times)
    assert (claims["iat"], claims["exp"], expires) == (1_800_000_000, 1_800_000_300, 1_800_000_300)
