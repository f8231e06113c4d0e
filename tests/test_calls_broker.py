"""Issue 5 §2-§4: the WebRTC SDP broker, call control and attach, through a real gateway to the emulator.

Offers come from a real aiortc peer; the emulator answers with its own aiortc peer, so a
brokered answer is proven by ICE connecting and the `oai-events` data channel opening.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import jwt
import openai
import pytest
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription
from openai import AsyncOpenAI

from emulator import Faults
from emulator.webrtc import use_loopback_ice
from gateway.auth.browser_keys import BrowserAuthConfig, BrowserAuthStore
from gateway.errors import GatewayError
from gateway.storage.policy_store import PolicyStore
from gateway.webrtc.multipart import parse_multipart
from gateway.webrtc.sdp import validate_sdp
from gateway.webrtc.upstream_http import call_id_from_location
from tests.support.harness import UPSTREAM_KEY, TenantKey, make_tenant, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("end_emulated_calls")]

POLICY: dict[str, Any] = {
    "models": ["gpt-realtime", "gpt-realtime-mini"],
    "voices": ["marin"],
    "max_output_tokens": 300,
}
HS_SECRET = secrets.token_urlsafe(40)


async def set_policy(pool: asyncpg.Pool, tenant: TenantKey, **fields: Any) -> None:
    await PolicyStore(pool, {}, None).set(tenant.tenant_id, {**POLICY, **fields}, actor="test")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def browser_token(tenant: TenantKey, sub: str = "user-1") -> str:
    now = int(time.time())
    payload = {"tenant_id": tenant.tenant_id, "sub": sub, "aud": "voxgate", "iat": now, "exp": now + 300}
    return jwt.encode(payload, HS_SECRET, algorithm="HS256")


class Peer:
    """A browser-like WebRTC client: an offer with an audio transceiver and the `oai-events` channel."""

    def __init__(self) -> None:
        use_loopback_ice()
        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel("oai-events")
        self.pc.addTransceiver("audio", direction="sendrecv")
        self.opened = asyncio.Event()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda m: self.events.put_nowait(json.loads(m)))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, answer: str) -> dict[str, Any]:
        """Apply the answer; returns the first server event over the data channel."""
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        async with asyncio.timeout(15):
            await self.opened.wait()
            return await self.events.get()

    async def close(self) -> None:
        await self.pc.close()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    yield p
    await p.close()


@pytest.fixture
async def browser_tenant(pg_pool: asyncpg.Pool) -> TenantKey:
    tenant = await make_tenant(pg_pool, "web")
    await BrowserAuthStore(pg_pool).set(BrowserAuthConfig(tenant.tenant_id, hs256_secret=HS_SECRET))
    return tenant


@pytest.fixture
def monitor(gateway) -> Any:
    """The gateway's real sideband monitor."""
    return gateway.services.calls_monitor


async def watched(monitor: Any, call_id: str) -> Any:
    """Wait until the real monitor has taken the call over; returns what it was handed."""
    async with asyncio.timeout(5):
        while (call := monitor.watching(call_id)) is None:
            await asyncio.sleep(0.02)
    return call


def emulated(emulator, call_id: str):
    return next(c for c in emulator.calls if c.call_id == call_id)


# -- brokering ------------------------------------------------------------------------------


async def test_multipart_offer_through_the_sdk(gateway, emulator, tenant, pg_pool, peer, monitor) -> None:
    await set_policy(pg_pool, tenant)
    offer = await peer.offer()
    async with AsyncOpenAI(
        base_url=gateway.base_url,
        api_key=tenant.secret,
        max_retries=0,
        default_headers={"X-Voxgate-End-User": "caller-9"},
    ) as client:
        raw = await client.realtime.calls.with_raw_response.create(
            sdp=offer, session={"type": "realtime", "model": "gpt-realtime", "max_output_tokens": 4096}
        )
    assert raw.status_code == 201
    assert raw.headers["content-type"].startswith("application/sdp")
    location = raw.headers["location"]
    assert location.startswith("/v1/realtime/calls/rtc_")
    call_id = location.rpartition("/")[2]
    upstream = emulated(emulator, call_id)
    assert upstream.form == "multipart"
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.headers["openai-safety-identifier"].startswith("vg_")
    assert upstream.session.protocol.session["max_output_tokens"] == 300  # clamped on the way
    # A real answer: ICE connects, DTLS completes, the data channel carries the session.
    first = await peer.connect(raw.content.decode())
    assert first["type"] == "session.created"
    assert first["session"]["max_output_tokens"] == 300
    # Recorded for every replica: Postgres, the Redis hash, and handed to the monitor.
    row = await pg_pool.fetchrow("SELECT * FROM realtime_calls WHERE call_id = $1", call_id)
    assert (row["tenant_id"], row["source"], row["state"], row["model"]) == (
        tenant.tenant_id,
        "brokered",
        "active",
        "gpt-realtime",
    )
    cached = await gateway.services.redis.hgetall(f"{gateway.settings.redis.key_prefix}call:{call_id}")
    assert cached[b"tenant_id"] == tenant.tenant_id.encode()
    assert cached[b"session_id"] == row["session_id"].encode()
    handed = await watched(monitor, call_id)
    assert (handed.call_id, handed.tenant_id, handed.session_id) == (call_id, tenant.tenant_id, row["session_id"])
    assert handed.leased  # the monitor owns the concurrency lease now
    assert handed.policy.max_output_tokens == 300
    assert handed.safety_id == upstream.headers["openai-safety-identifier"]
    await gateway.services.enforcement.release(tenant.tenant_id, handed.session_id)
    await gateway.settle()
    session = await pg_pool.fetchrow("SELECT transport, model FROM realtime_sessions WHERE id = $1", row["session_id"])
    assert (session["transport"], session["model"]) == ("webrtc", "gpt-realtime")


async def test_raw_offer_with_a_tenant_key_and_no_policy_limits_stays_raw(gateway, emulator, tenant, peer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
    assert response.status_code == 201, response.text
    call_id = call_id_from_location(response.headers["location"])
    assert emulated(emulator, call_id).form == "sdp"
    assert (await peer.connect(response.text))["type"] == "session.created"


async def test_raw_offer_gets_the_policy_session(gateway, emulator, tenant, pg_pool, peer) -> None:
    # The allowlist's GPT-Live and transcription models sort first; a raw offer (it cannot name a
    # model) runs on its Realtime model, not on them (before, every such offer was refused 403).
    await set_policy(pg_pool, tenant, models=["gpt-4o-transcribe", "gpt-live-1", "gpt-realtime-mini"])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
    assert response.status_code == 201, response.text
    upstream = emulated(emulator, call_id_from_location(response.headers["location"]))
    assert upstream.form == "multipart"  # so the policy's model and ceiling are in force from the start
    assert upstream.session.protocol.session["model"] == "gpt-realtime-mini"
    assert upstream.session.protocol.session["max_output_tokens"] == 300


async def test_a_raw_offer_may_name_its_model_in_the_query(gateway, emulator, tenant, pg_pool, peer) -> None:
    # Browser snippets post a raw offer to `/v1/realtime/calls?model=...`: the model is policed and
    # is what upstream runs (a review found it refused as an unknown parameter, and before that ignored).
    await set_policy(pg_pool, tenant, models=["gpt-realtime", "gpt-realtime-mini"])
    headers = {**auth(tenant.secret), "Content-Type": "application/sdp"}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls?model=gpt-realtime-mini", content=await peer.offer(), headers=headers
        )
        refused = await http.post(
            f"{gateway.base_url}/realtime/calls?model=gpt-realtime-2", content=await peer.offer(), headers=headers
        )
    assert response.status_code == 201, response.text
    upstream = emulated(emulator, call_id_from_location(response.headers["location"]))
    assert upstream.session.protocol.session["model"] == "gpt-realtime-mini"
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed", refused.text


async def test_browser_offer_hangup_and_visibility(gateway, emulator, browser_tenant, pg_pool, peer) -> None:
    token = browser_token(browser_tenant, "alice")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={**auth(token), "Content-Type": "application/sdp"},
        )
        assert response.status_code == 201, response.text
        location = response.headers["location"]
        await peer.connect(response.text)
        url = f"{gateway.base_url.removesuffix('/v1')}{location}"
        mine = await http.get(url, headers=auth(token))
        someone_else = await http.get(url, headers=auth(browser_token(browser_tenant, "mallory")))
        by_backend = await http.get(url, headers=auth(browser_tenant.secret))
        not_theirs = await http.post(f"{url}/hangup", headers=auth(browser_token(browser_tenant, "mallory")))
        hung_up = await http.post(f"{url}/hangup", headers=auth(token))
        again = await http.post(f"{url}/hangup", headers=auth(token))
        after = await http.get(url, headers=auth(browser_tenant.secret))
    assert mine.status_code == 200
    assert mine.json()["state"] == "active"
    assert mine.json()["id"] == location.rpartition("/")[2]
    assert someone_else.status_code == 404
    assert by_backend.status_code == 200
    assert not_theirs.status_code == 404
    assert hung_up.status_code == 200
    assert again.status_code == 200  # idempotent
    assert after.json()["state"] == "ended"
    assert after.json()["end_reason"] == "hangup"
    assert emulated(emulator, location.rpartition("/")[2]).hung_up
    await gateway.settle()
    ended = await pg_pool.fetchrow(
        "SELECT end_reason, ended_at, api_key_id FROM realtime_sessions WHERE id = $1", after.json()["session_id"]
    )
    # The hangup's reason wins over the sideband monitor seeing the call drop, whichever ends it first.
    assert ended["end_reason"] == "client_hangup"
    assert ended["ended_at"] is not None
    assert ended["api_key_id"] is None


async def test_browser_tokens_cannot_send_a_session(gateway, emulator, browser_tenant, peer) -> None:
    before = len(emulator.calls)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            headers=auth(browser_token(browser_tenant)),
            files={
                "sdp": (None, await peer.offer(), "application/sdp"),
                "session": (None, json.dumps({"type": "realtime"}), "application/json"),
            },
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "browser_token_not_allowed"
    assert len(emulator.calls) == before


async def test_another_tenants_call_is_404(gateway, emulator, tenant, pg_pool, peer) -> None:
    other = await make_tenant(pg_pool, "other")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
        url = f"{gateway.base_url}/realtime/calls/{call_id_from_location(response.headers['location'])}"
        peek = await http.get(url, headers=auth(other.secret))
        hang = await http.post(f"{url}/hangup", headers=auth(other.secret))
        unknown = await http.get(f"{gateway.base_url}/realtime/calls/rtc_unknown", headers=auth(tenant.secret))
        attach = await http.post(
            f"{gateway.base_url}/voxgate/calls/{url.rpartition('/')[2]}/attach", headers=auth(other.secret)
        )
    for answer in (peek, hang, unknown, attach):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "call_not_found"
    # Another tenant's call and no call at all look the same, but for the id in the message.
    assert {k: v for k, v in peek.json()["error"].items() if k != "message"} == {
        k: v for k, v in unknown.json()["error"].items() if k != "message"
    }
    assert not emulated(emulator, url.rpartition("/")[2]).hung_up


async def test_any_replica_finds_the_call(gateway, emulator, tenant, peer) -> None:
    replica = await start_gateway(
        replace(gateway.settings, server=replace(gateway.settings.server, instance_id="replica-b"))
    )
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{gateway.base_url}/realtime/calls",
                content=await peer.offer(),
                headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
            )
            call_id = call_id_from_location(response.headers["location"])
            await gateway.services.redis.delete(f"{gateway.settings.redis.key_prefix}call:{call_id}")  # Postgres path
            seen = await http.get(f"{replica.base_url}/realtime/calls/{call_id}", headers=auth(tenant.secret))
        async with AsyncOpenAI(base_url=replica.base_url, api_key=tenant.secret, max_retries=0) as client:
            assert await client.realtime.calls.hangup(call_id) is None  # the SDK's own hangup call
    finally:
        await replica.stop()
    assert seen.status_code == 200
    assert seen.json()["state"] == "active"
    assert emulated(emulator, call_id).hung_up


# -- refusals -------------------------------------------------------------------------------

GOOD_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"hello there",
        b"o=- 1 1 IN IP4 127.0.0.1\r\nv=0\r\ns=-\r\nm=audio 9 RTP 0\r\n",  # not starting with v=0
        b"v=0\r\ns=-\r\nm=audio 9 RTP 0\r\n",  # no o=
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nm=audio 9 RTP 0\r\n",  # no s=
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",  # no m=
        GOOD_SDP.encode().replace(b"s=-", "s=caf\u00e9".encode()),  # not ASCII
        GOOD_SDP.encode() + b"\x00\x01binary\r\n",
        GOOD_SDP.encode() + b"\r\n\r\na=after-a-blank-line\r\n",
    ],
)
async def test_garbage_sdp_is_400(gateway, emulator, tenant, body) -> None:
    before = len(emulator.calls)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=body,
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_sdp"
    assert response.json()["error"]["param"] == "sdp"
    assert len(emulator.calls) == before


async def test_oversized_offers_are_413(gateway, emulator, tenant) -> None:
    huge = GOOD_SDP + "a=x-padding:" + "x" * (64 * 1024) + "\r\n"
    async with httpx.AsyncClient() as http:
        raw = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=huge,
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
        multipart = await http.post(
            f"{gateway.base_url}/realtime/calls",
            headers=auth(tenant.secret),
            files={
                "sdp": (None, huge, "application/sdp"),
                "session": (None, '{"type": "realtime"}', "application/json"),
            },
        )
        wrong_type = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=GOOD_SDP,
            headers={**auth(tenant.secret), "Content-Type": "text/plain"},
        )
        no_sdp_part = await http.post(
            f"{gateway.base_url}/realtime/calls",
            headers=auth(tenant.secret),
            files={"session": (None, '{"type": "realtime"}', "application/json")},
        )
    assert (raw.status_code, raw.json()["error"]["code"]) == (413, "sdp_too_large")
    assert (multipart.status_code, multipart.json()["error"]["code"]) == (413, "sdp_too_large")
    assert (wrong_type.status_code, wrong_type.json()["error"]["code"]) == (415, "unsupported_content_type")
    assert (no_sdp_part.status_code, no_sdp_part.json()["error"]["param"]) == (400, "sdp")


async def test_policy_refusal_in_the_session_part(gateway, emulator, tenant, pg_pool, peer) -> None:
    await set_policy(pg_pool, tenant)
    before = len(emulator.calls)
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.realtime.calls.create(
                sdp=await peer.offer(), session={"type": "realtime", "model": "gpt-4o-realtime-preview"}
            )
    assert caught.value.code == "model_not_allowed"
    assert caught.value.param == "session.model"
    assert len(emulator.calls) == before


async def test_upstream_refusal_releases_the_lease(gateway, emulator, tenant, pg_pool, peer, monitor) -> None:
    await set_policy(pg_pool, tenant, max_concurrent_sessions=1)
    offer = await peer.offer()
    async with httpx.AsyncClient() as http:
        emulator.faults = Faults(connect_status=429, retry_after_s=3)
        limited = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=offer,
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
        emulator.faults = Faults()
        admitted = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=offer,
            headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
        )
        # The monitor holds the first call's lease: a second concurrent call is refused.
        extra = Peer()
        try:
            second = await http.post(
                f"{gateway.base_url}/realtime/calls",
                content=await extra.offer(),
                headers={**auth(tenant.secret), "Content-Type": "application/sdp"},
            )
        finally:
            await extra.close()
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert admitted.status_code == 201, admitted.text
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    held = await watched(monitor, admitted.headers["location"].rpartition("/")[2])
    assert held.leased
    await gateway.services.enforcement.release(tenant.tenant_id, held.session_id)


# -- attach ---------------------------------------------------------------------------------


async def direct_call(emulator, ephemeral_key: str, offer: str) -> str:
    """What a browser does with an ephemeral key: talk to OpenAI (here: the emulator) directly."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{emulator.base_url}/realtime/calls",
            content=offer,
            headers={**auth(ephemeral_key), "Content-Type": "application/sdp"},
        )
    assert response.status_code == 201, response.text
    return call_id_from_location(response.headers["location"]) or ""


async def test_attach_a_call_opened_with_a_minted_secret(gateway, emulator, tenant, pg_pool, peer, monitor) -> None:
    other = await make_tenant(pg_pool, "other")
    async with AsyncOpenAI(base_url=gateway.base_url, api_key=tenant.secret, max_retries=0) as client:
        secret = await client.realtime.client_secrets.create(session={"type": "realtime"})
    call_id = await direct_call(emulator, secret.value, await peer.offer())
    async with httpx.AsyncClient() as http:
        url = f"{gateway.base_url}/voxgate/calls/{call_id}/attach"
        stranger = await http.post(url, headers=auth(other.secret))
        attached = await http.post(url, headers=auth(tenant.secret))
        twice = await http.post(url, headers=auth(tenant.secret))
        browser = await http.post(url, headers=auth(browser_token(tenant)))
    assert stranger.status_code == 404
    assert attached.status_code == 200, attached.text
    body = attached.json()
    assert (body["id"], body["source"], body["state"]) == (call_id, "attached", "active")
    assert body["upstream_session_id"] == secret.session.id
    minted = await pg_pool.fetchrow(
        "SELECT session_id FROM minted_client_secrets WHERE upstream_session_id = $1", secret.session.id
    )
    assert body["session_id"] == minted["session_id"]
    assert twice.status_code == 200
    assert browser.status_code == 403
    handed = await watched(monitor, call_id)
    assert (handed.call_id, handed.tenant_id, handed.leased) == (call_id, tenant.tenant_id, False)


async def test_attach_refuses_calls_voxgate_did_not_mint(gateway, emulator, tenant, peer) -> None:
    # A secret minted straight at the upstream, bypassing voxgate.
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            f"{emulator.base_url}/realtime/client_secrets",
            json={"session": {"type": "realtime"}},
            headers=auth(UPSTREAM_KEY),
        )
        call_id = await direct_call(emulator, minted.json()["value"], await peer.offer())
        foreign = await http.post(f"{gateway.base_url}/voxgate/calls/{call_id}/attach", headers=auth(tenant.secret))
        unknown = await http.post(f"{gateway.base_url}/voxgate/calls/rtc_0000/attach", headers=auth(tenant.secret))
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "call_not_found")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "call_not_found")


# -- pure helpers ---------------------------------------------------------------------------


def test_call_id_from_location() -> None:
    assert call_id_from_location("/v1/realtime/calls/rtc_abc") == "rtc_abc"
    assert call_id_from_location("https://api.openai.com/v1/realtime/calls/rtc_abc/?x=1") == "rtc_abc"
    assert call_id_from_location("") is None
    assert call_id_from_location("/v1/realtime/calls/bad%20id") is None


def test_sdp_accepts_lf_and_crlf() -> None:
    assert validate_sdp(GOOD_SDP.encode()) == GOOD_SDP
    assert validate_sdp(GOOD_SDP.replace("\r\n", "\n").encode())


def test_multipart_parts_are_exact() -> None:
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="sdp"\r\nContent-Type: application/sdp\r\n\r\n'
        + GOOD_SDP.encode()
        + b'\r\n--b0\r\nContent-Disposition: form-data; name="session"\r\n\r\n{}\r\n--b0--\r\n'
    )
    parts = parse_multipart(body, 'multipart/form-data; boundary="b0"')
    assert parts == {"sdp": GOOD_SDP.encode(), "session": b"{}"}


def test_multipart_parts_may_be_lf_framed_and_the_first_of_a_name_wins() -> None:
    body = (
        b'--b0\nContent-Disposition: form-data; name="sdp"\n\nfirst\n'
        b'--b0\nContent-Disposition: form-data; name="sdp"\n\nsecond\n'
        b"--b0\nContent-Type: text/plain\n\nno name: ignored\n--b0--\n"
    )
    assert parse_multipart(body, "multipart/form-data; boundary=b0") == {"sdp": b"first"}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"--b0\r\n\r\nx\r\n--b0--", "multipart/form-data", "The multipart body has no boundary."),
        (b"--b0\r\n\r\nx\r\n--b0--", 'multipart/form-data; boundary=""', "The multipart body has no boundary."),
        (b"no delimiter at all", "multipart/form-data; boundary=b0", "The multipart body has no parts."),
        (b"--b0--\r\n", "multipart/form-data; boundary=b0", "The multipart body has no parts."),
        (
            b'--b0\r\nContent-Disposition: form-data; name="sdp"--b0--',
            "multipart/form-data; boundary=b0",
            "A multipart part has no header block.",
        ),
    ],
)
def test_malformed_multipart_bodies_are_400(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_multipart(body, content_type)
    assert (info.value.status, info.value.code, info.value.message) == (400, "invalid_multipart", message)


def sdp_of(size: int) -> bytes:
    """A valid offer padded with an attribute line to exactly `size` bytes."""
    padding = size - len(GOOD_SDP) - len("a=x-padding:\r\n")
    sdp = (GOOD_SDP + "a=x-padding:" + "x" * padding + "\r\n").encode()
    assert len(sdp) == size
    return sdp


def test_an_offer_of_exactly_64_kib_is_taken_and_one_byte_more_is_413() -> None:
    # docs/webrtc.md: "At most 64 KiB, or 413 `sdp_too_large`" (64 KiB = 65_536 bytes).
    assert validate_sdp(sdp_of(65_536)).startswith("v=0")
    with pytest.raises(GatewayError) as info:
        validate_sdp(sdp_of(65_537))
    assert (info.value.status, info.value.code) == (413, "sdp_too_large")


async def test_a_browser_user_and_the_backend_naming_that_user_share_one_safety_identifier(
    gateway, emulator, browser_tenant, peer
) -> None:
    # docs/webrtc.md: a backend sending `X-Voxgate-End-User: user-123` with its tenant key gets the same
    # identifier as a browser token whose `sub` is user-123; README: without the header every upstream
    # request still carries one (the key's), which is not the user's.
    async with httpx.AsyncClient() as http:
        brokered = await http.post(
            f"{gateway.base_url}/realtime/calls",
            content=await peer.offer(),
            headers={**auth(browser_token(browser_tenant, "user-123")), "Content-Type": "application/sdp"},
        )
    assert brokered.status_code == 201, brokered.text
    from_browser = emulated(emulator, brokered.headers["location"].rpartition("/")[2]).headers
    seen: list[str] = []
    for headers in ({"X-Voxgate-End-User": "user-123"}, {}):
        before = len(emulator.sessions)
        async with websockets.connect(
            f"{gateway.ws_url}?model=gpt-realtime", additional_headers={**auth(browser_tenant.secret), **headers}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        seen.append(emulator.sessions[before].headers["openai-safety-identifier"])
    named, unnamed = seen
    assert from_browser["openai-safety-identifier"] == named
    assert named.startswith("vg_") and "user-123" not in named
    assert unnamed.startswith("vg_") and unnamed != named


async def test_a_multipart_offer_is_bounded_at_64_kib_plus_1_mib(gateway, emulator, tenant) -> None:
    # docs/webrtc.md: "A multipart body may be 64 KiB + 1 MiB in total" (the session part at most 1 MiB).
    session = json.dumps({"type": "realtime", "instructions": ""})
    huge_session = session[:-2] + "x" * (1024 * 1024 + 1 - len(session)) + '"}'
    assert len(huge_session.encode()) == 1024 * 1024 + 1
    before = len(emulator.calls)
    async with httpx.AsyncClient() as http:
        too_big = await http.post(
            f"{gateway.base_url}/realtime/calls",
            headers=auth(tenant.secret),
            files={"sdp": (None, GOOD_SDP, "application/sdp"), "session": (None, huge_session, "application/json")},
        )
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "request_too_large")
    assert len(emulator.calls) == before
