"""Realtime translation on the emulator: WebSocket, client secrets and WebRTC calls.

Every event validates against `RealtimeTranslationServerEvent` with no undeclared keys;
no event carries usage, so the figures a meter needs are the appended audio and the
`elapsed_ms` of the translated audio, which advances in 200 ms frames.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.audio import silence, tone
from emulator.client import RealtimeClient
from tests.support.live_conformance import EXAMPLES, validate_translation
from tests.support.webrtc_client import ClientPeer

KEY = "sk-emulator"
TRANSLATION = EXAMPLES["translation"]


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY)) as emulator:
        yield emulator


def ws_url(emu: RealtimeEmulator, query: str = "model=gpt-realtime-translate") -> str:
    return emu.base_url.replace("http://", "ws://", 1) + "/realtime/translations?" + query


async def test_a_session_through_the_sdk_translates_in_200_ms_frames(emu: RealtimeEmulator) -> None:
    client = AsyncOpenAI(base_url=emu.base_url, api_key=KEY)
    audio = tone(900) + silence(700)  # 1.6 s: eight 200 ms frames
    try:
        async with client.realtime.translations.connect(model="gpt-realtime-translate") as connection:
            created = await connection.recv()
            assert created.type == "session.created"
            update = {
                "audio": {"output": {"language": "es"}, "input": {"transcription": {"model": "gpt-live-transcribe"}}}
            }
            await connection.send({"type": "session.update", "session": update})  # type: ignore[arg-type]
            append = {"type": "session.input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}
            await connection.send(append)  # type: ignore[arg-type]
            await connection.send({"type": "session.close"})
            events: list[Any] = []
            async with asyncio.timeout(10):
                async for event in connection:
                    events.append(event)
    finally:
        await client.close()
    types = [e.type for e in events]
    assert types[0] == "session.updated" and types[-1] == "session.closed"
    elapsed = [e.elapsed_ms for e in events if e.type == "session.output_audio.delta"]
    assert elapsed == [200 * n for n in range(1, 9)]
    spoken = [e.delta for e in events if e.type == "session.output_transcript.delta"]
    assert spoken and all(s.startswith("[es] ") for s in spoken)
    assert any(e.type == "session.input_transcript.delta" for e in events)
    assert emu.translations.sessions[0].protocol.appended_bytes == len(audio)  # seconds = bytes / 48,000
    assert validate_translation(emu) >= {"session.created", "session.updated", "session.closed"}


async def test_a_client_secret_opens_a_websocket_and_a_webrtc_call(emu: RealtimeEmulator) -> None:
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=10) as http:
        minted = await http.post(
            "/realtime/translations/client_secrets",
            json=TRANSLATION["client_secret.request"],
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert minted.status_code == 200, minted.text
        secret = minted.json()
        assert secret["session"]["audio"]["input"]["noise_reduction"] == {"type": "near_field", "strength": 1.0}
        async with await RealtimeClient.connect(ws_url(emu), api_key=secret["value"]) as client:
            created = await client.wait_for("session.created")
            assert created["session"]["id"] == secret["session"]["id"]
        peer = ClientPeer(speech_ms=600)
        try:
            headers = {"Authorization": f"Bearer {secret['value']}", "Content-Type": "application/sdp"}
            answer = await http.post("/realtime/translations/calls", content=await peer.offer(), headers=headers)
            assert answer.status_code == 201, answer.text
            await peer.accept(answer.text)
            assert (await peer.wait_for("session.created"))["session"]["audio"]["output"]["language"] == "es"
            assert (await peer.wait_for("session.output_transcript.delta"))["delta"].startswith("[es] ")
            peer.send("session.close")
            await peer.wait_for("session.closed")
        finally:
            await peer.close()
    assert validate_translation(emu)


async def test_errors_before_and_after_the_upgrade(emu: RealtimeEmulator) -> None:
    for query, status in (("", 400), ("model=gpt-realtime", 400)):
        with pytest.raises(InvalidStatus) as refused:
            await RealtimeClient.connect(ws_url(emu, query), api_key=KEY)
        assert refused.value.response.status_code == status
    async with await RealtimeClient.connect(ws_url(emu), api_key=KEY) as client:
        await client.wait_for("session.created")
        await client.send("session.input_audio_buffer.append", audio=base64.b64encode(b"\x00").decode())
        error = (await client.wait_for("error"))["error"]
        expected = TRANSLATION["error"]["error"]
        assert (error["type"], error["code"], error["message"]) == (
            expected["type"],
            expected["code"],
            expected["message"],
        )
        await client.send("session.update", session={"model": "gpt-realtime-translate-2"})
        assert (await client.wait_for("error"))["error"]["param"] == "session.model"
    assert validate_translation(emu)
