"""A browser-like WebRTC peer (aiortc) for tests: `oai-events` data channel plus a tone track."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from emulator.webrtc import ToneTrack, use_loopback_ice


class ClientPeer:
    """A browser-like peer: creates `oai-events` and an audio sendrecv transceiver with a tone."""

    def __init__(self, speech_ms: int = 0) -> None:
        use_loopback_ice()  # the emulator answers on 127.0.0.1 only; this offers it (even with only `lo`)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.opened = asyncio.Event()
        self.channel_closed = asyncio.Event()
        self.connection_closed = asyncio.Event()
        self.track = ToneTrack()
        self.track.play(speech_ms)  # the VAD hears this as one utterance
        self.pc.addTransceiver(self.track, direction="sendrecv")
        self.frames = 0
        self.loud_frames = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("close", self.channel_closed.set)
        self.channel.on("message", self._message)
        self.pc.on("track", self._track)
        self.pc.on("connectionstatechange", self._state)

    def _message(self, text: str) -> None:
        event = json.loads(text)
        self.events.append(event)
        self._inbox.put_nowait(event)

    def _state(self) -> None:
        if self.pc.connectionState == "closed":
            self.connection_closed.set()

    def _track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames += 1
            if any(bytes(frame.planes[0])):
                self.loud_frames += 1

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        async with asyncio.timeout(10):
            await self.opened.wait()

    def send(self, kind: str, **fields: Any) -> None:
        self.channel.send(json.dumps({"type": kind, **fields}))

    async def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self._inbox.get()
                if event["type"] == kind:
                    return event

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
