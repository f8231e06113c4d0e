"""Transcription sessions with the GPT-Live-era transcribers: `gpt-live-transcribe`, `gpt-realtime-whisper`.

Both have no voice activity detection (turns are committed by the client) and report the
committed audio's duration as `usage: {"type": "duration", "seconds": …}` on
`conversation.item.input_audio_transcription.completed`; GPT-Live models are refused on
`/v1/realtime` with `invalid_model`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import Field, TypeAdapter
from websockets.exceptions import InvalidStatus

from emulator import EmulatorConfig, RealtimeEmulator
from emulator.audio import tone
from emulator.client import RealtimeClient
from tests.support.live_conformance import EXAMPLES

KEY = "sk-emulator"
ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
UPDATE = EXAMPLES["transcription"]["session.update.gpt-live-transcribe"]


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator(EmulatorConfig(api_key=KEY)) as emulator:
        yield emulator


async def transcription_session(emu: RealtimeEmulator) -> RealtimeClient:
    client = await RealtimeClient.connect(f"{emu.ws_url}?intent=transcription", api_key=KEY)
    await client.wait_for("session.created")
    return client


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-realtime-whisper"])
async def test_committed_audio_is_reported_as_duration(emu: RealtimeEmulator, model: str) -> None:
    update = copy.deepcopy(UPDATE)
    update["session"]["audio"]["input"]["transcription"]["model"] = model
    async with await transcription_session(emu) as client:
        await client.send_raw(json.dumps(update))
        await client.wait_for("session.updated")
        for ms in (1000, 2500):
            await client.append_audio(tone(ms))
            await client.send("input_audio_buffer.commit")
            completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
            assert completed["usage"] == {"type": "duration", "seconds": ms / 1000}
    for event in emu.sessions[0].server_events:
        ADAPTER.validate_python(event)


async def test_voice_activity_detection_is_refused_for_these_transcribers(emu: RealtimeEmulator) -> None:
    update = copy.deepcopy(UPDATE)
    update["session"]["audio"]["input"]["turn_detection"] = {"type": "server_vad"}
    async with await transcription_session(emu) as client:
        await client.send("session.update", session=update["session"], event_id="evt_vad")
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value",
            "session.audio.input.turn_detection",
            "evt_vad",
        )


async def test_a_live_model_on_the_realtime_route_is_refused(emu: RealtimeEmulator) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await RealtimeClient.connect(f"{emu.ws_url}?model=gpt-live-1", api_key=KEY)
    assert refused.value.response.status_code == 400
    assert b"invalid_model" in refused.value.response.body
