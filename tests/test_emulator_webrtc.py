"""The emulator's WebRTC surface, driven by a real aiortc client peer on loopback.

client_secrets, both `/calls` forms, ICE + DTLS + the `oai-events` data channel, audio both
ways, the `?call_id=` sideband, hangup, and the errors. Every event either transport carried
validates against the openai SDK's `RealtimeServerEvent` adapter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from openai.types.realtime import ClientSecretCreateResponse, RealtimeServerEvent
from pydantic import Field, TypeAdapter
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.client import RealtimeClient
from emulator.webrtc import loopback_candidates
from tests.support.webrtc_client import ClientPeer

KEY = "sk-emulator"
ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.", "max_output_tokens": 512}


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY)) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: RealtimeEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=10) as client:
        yield client


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def mint(http: httpx.AsyncClient) -> dict[str, Any]:
    body = {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": SESSION}
    response = await http.post("/realtime/client_secrets", json=body, headers=auth())
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def validate(events: list[dict[str, Any]]) -> set[str]:
    for event in events:
        ADAPTER.validate_python(event)
    return {e["type"] for e in events}


async def test_client_secrets_mint_a_key_the_sdk_reads(emu: RealtimeEmulator, http: httpx.AsyncClient) -> None:
    data = await mint(http)
    parsed = ClientSecretCreateResponse.model_validate(data)
    assert parsed.value.startswith("ek_")
    assert parsed.session.type == "realtime"
    assert data["session"]["max_output_tokens"] == 512
    assert data["session"]["id"].startswith("sess_")
    assert emu.client_secrets[0].request["session"] == SESSION
    assert emu.client_secrets[0].session == data["session"]
    # An ek is not a standard key, a bad body is a 400, faults apply.
    assert (await http.post("/realtime/client_secrets", json={}, headers=auth(data["value"]))).status_code == 401
    bad = await http.post("/realtime/client_secrets", json={"expires_after": {"seconds": 5}}, headers=auth())
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "code", "param"}
    emu.faults.connect_status = 503
    assert (await http.post("/realtime/client_secrets", json={}, headers=auth())).status_code == 503
    assert (await http.post("/realtime/calls", content="v=0", headers=auth())).status_code == 503
    emu.faults.connect_status = None
    # The ek opens a WebSocket session carrying the minted config and id.
    async with await RealtimeClient.connect(f"{emu.ws_url}", api_key=data["value"]) as ws:
        created = await ws.wait_for("session.created")
    assert created["session"]["id"] == data["session"]["id"]
    assert created["session"]["instructions"] == "Be brief."


async def test_a_call_over_raw_sdp_with_an_ek(emu: RealtimeEmulator, http: httpx.AsyncClient) -> None:
    secret = await mint(http)
    client = ClientPeer(speech_ms=600)
    try:
        headers = {**auth(secret["value"]), "Content-Type": "application/sdp"}
        response = await http.post("/realtime/calls", content=await client.offer(), headers=headers)
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/sdp")
        call_id = response.headers["location"].rsplit("/", 1)[-1]
        assert call_id.startswith("rtc_")
        await client.accept(response.text)
        assert client.pc.iceConnectionState in ("connected", "completed")
        created = await client.wait_for("session.created")
        assert created["session"]["id"] == secret["session"]["id"]
        assert created["session"]["max_output_tokens"] == 512
        call = emu.calls[0]
        assert (call.call_id, call.form, call.ephemeral_key) == (call_id, "sdp", secret["value"])

        # The client's audio track is the input: VAD hears 600 ms of tone and answers.
        await client.wait_for("input_audio_buffer.speech_stopped")
        voice = await client.wait_for("response.done")
        assert voice["response"]["usage"]["input_token_details"]["audio_tokens"] > 0
        await client.wait_for("output_audio_buffer.stopped")
        assert client.loud_frames > 0  # the reply played on the emulator's track

        # A sideband attaches and sees the next turn too.
        async with await RealtimeClient.connect(f"{emu.ws_url}?call_id={call_id}", api_key=KEY) as side:
            await side.wait_for("session.created")
            client.send(
                "conversation.item.create",
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            )
            client.send("response.create")
            done = await client.wait_for("response.done")
            side_done = await side.wait_for("response.done")
            assert done == side_done
            assert done["response"]["status"] == "completed"
            assert done["response"]["usage"]["total_tokens"] > 0
            await client.wait_for("output_audio_buffer.stopped")
            # A response the sideband asks for shows up on both.
            await side.send("response.create", response={"output_modalities": ["text"]})
            side_done = await side.wait_for("response.done")
            done = await client.wait_for("response.done")
            assert done["response"]["id"] == side_done["response"]["id"]

            types = validate(client.events)
            validate(side.events)
            validate(call.session.server_events)
            assert "response.output_audio.delta" not in types
            assert {"output_audio_buffer.started", "output_audio_buffer.stopped"} <= types

            # Hangup ends everything: the data channel, the connection, the sideband.
            assert (await http.post(f"/realtime/calls/{call_id}/hangup", headers=auth())).status_code == 200
            async with asyncio.timeout(10):
                await client.channel_closed.wait()
                await client.connection_closed.wait()
            with pytest.raises(ConnectionClosed) as closed:
                await side.wait_for("never")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert call.hung_up and call.session.closed
    finally:
        await client.close()


async def test_a_call_over_multipart_with_the_standard_key(emu: RealtimeEmulator, http: httpx.AsyncClient) -> None:
    client = ClientPeer()
    try:
        files = {
            "sdp": (None, await client.offer(), "application/sdp"),
            "session": (None, json.dumps({"type": "realtime", "model": "gpt-realtime-mini"}), "application/json"),
        }
        response = await http.post("/realtime/calls", files=files, headers=auth())
        assert response.status_code == 201, response.text
        await client.accept(response.text)
        created = await client.wait_for("session.created")
        assert created["session"]["model"] == "gpt-realtime-mini"
        assert emu.calls[0].form == "multipart" and emu.calls[0].ephemeral_key is None
        client.send("response.create", response={"output_modalities": ["text"]})
        done = await client.wait_for("response.done")
        assert done["response"]["usage"]["output_tokens"] > 0
        validate(client.events)
    finally:
        await client.close()


async def test_bad_offers_and_unknown_calls(emu: RealtimeEmulator, http: httpx.AsyncClient) -> None:
    sdp = {**auth(), "Content-Type": "application/sdp"}
    garbage = await http.post("/realtime/calls", content="hello there", headers=sdp)
    assert garbage.status_code == 400
    assert set(garbage.json()["error"]) == {"message", "type", "code", "param"}
    no_channel = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    assert (await http.post("/realtime/calls", content=no_channel, headers=sdp)).status_code == 400
    assert (await http.post("/realtime/calls", content="v=0", headers=auth("sk-wrong"))).status_code == 401
    missing = await http.post("/realtime/calls/rtc_nope/hangup", headers=auth())
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(InvalidStatus) as exc:
        await RealtimeClient.connect(f"{emu.ws_url}?call_id=rtc_nope", api_key=KEY)
    assert exc.value.response.status_code == 404
    assert emu.calls == []


async def test_session_expiry_ends_the_call() -> None:
    async with (
        RealtimeEmulator(EmulatorConfig(api_key=KEY, max_session_seconds=1.0)) as emu,
        httpx.AsyncClient(base_url=emu.base_url, timeout=10) as http,
    ):
        client = ClientPeer()
        try:
            headers = {**auth(), "Content-Type": "application/sdp"}
            response = await http.post("/realtime/calls", content=await client.offer(), headers=headers)
            await client.accept(response.text)
            error = await client.wait_for("error", timeout=5)
            assert error["error"]["code"] == "session_expired"
            async with asyncio.timeout(10):
                await client.channel_closed.wait()
            assert emu.calls[0].ended and not emu.calls[0].hung_up
            validate(client.events)
        finally:
            await client.close()


def test_the_peer_keeps_only_loopback_candidates_from_an_offer() -> None:
    offer = (
        "v=0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 44694 typ host\r\n"
        "a=candidate:2 1 udp 2122063615 192.0.2.2 34778 typ host\r\n"
        "a=candidate:3 1 udp 2122267903 ::1 39252 typ host\r\n"
        "a=candidate:4 1 udp 2122134271 2f1c6a1e-0c1d-4f6e-9a37-1f0e8f7a6b21.local 41145 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    assert loopback_candidates(offer) == (
        "v=0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 44694 typ host\r\n"
        "a=candidate:3 1 udp 2122267903 ::1 39252 typ host\r\na=end-of-candidates\r\n"
    )
