"""The emulator's WebRTC peer: one aiortc `RTCPeerConnection` per call.

The client creates the `oai-events` data channel in its offer (as browsers do); the peer
accepts it and serves the call's `EmulatedSession` over it, text messages being JSON events
both ways. The peer sends a `ToneTrack` (a quiet tone while a response speaks, silence
otherwise) and reads the client's audio track as the session's input audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import math
import time
from array import array
from collections.abc import Callable
from typing import Any

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

EVENTS_CHANNEL = "oai-events"
MAX_OFFER_BYTES = 64 * 1024
TRACK_RATE = 48_000
FRAME_MS = 20
TONE_HZ = 220.0
TONE_AMPLITUDE = 1_600  # about 5 % of full scale: quiet


class OfferError(ValueError):
    """The SDP offer is not one the emulator can answer."""


# --- ICE on loopback ---------------------------------------------------------------------

_host_addresses = aioice.ice.get_host_addresses


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_ice(enabled: bool = True) -> None:
    """Make aiortc gather only a 127.0.0.1 host candidate (process-wide).

    aioice never offers loopback addresses, so without this a machine whose only interface
    is `lo` cannot connect two local peers. The emulator turns it on when it answers its
    first call; `use_loopback_ice(False)` restores the interface scan.
    """
    aioice.ice.get_host_addresses = _loopback_addresses if enabled else _host_addresses


def loopback_candidates(sdp: str) -> str:
    """`sdp` without its ICE candidates that are not on loopback.

    The emulator's peer listens on 127.0.0.1 only, so a remote candidate elsewhere can only
    cost a check sent off loopback, and an mDNS `.local` one a multicast DNS query. A
    browser offers its loopback candidates when started with `--allow-loopback-in-peer-connection`
    (docs/webrtc.md); its checks from other addresses still arrive as peer-reflexive candidates.
    """
    return "".join(line for line in sdp.splitlines(keepends=True) if _kept(line))


def _kept(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return True
    fields = line.split()
    try:
        return len(fields) > 4 and ipaddress.ip_address(fields[4]).is_loopback
    except ValueError:  # an mDNS name
        return False


# --- the offer ---------------------------------------------------------------------------


def check_offer(sdp: str) -> None:
    """Reject what is not an SDP offer with an `m=application` (data channel) section."""
    if not sdp.strip():
        raise OfferError("The SDP offer is empty.")
    if len(sdp.encode()) > MAX_OFFER_BYTES:
        raise OfferError(f"The SDP offer is larger than {MAX_OFFER_BYTES} bytes.")
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if lines[0] != "v=0":
        raise OfferError("The SDP offer must start with 'v=0'.")
    if not any(line.startswith("m=application ") for line in lines):
        raise OfferError("The SDP offer has no data channel (m=application) section.")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise OfferError("The SDP offer has no DTLS fingerprint.")


# --- audio out ---------------------------------------------------------------------------


class ToneTrack(MediaStreamTrack):
    """20 ms frames of 48 kHz mono PCM: a quiet 220 Hz tone while audio is queued, else silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pending_ms = 0
        self.played_ms = 0  # tone sent so far, for tests
        self._samples = TRACK_RATE * FRAME_MS // 1000
        self._timestamp = 0
        self._start: float | None = None
        self._phase = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def play(self, ms: int) -> None:
        self.pending_ms += ms
        self._drained.clear()

    def clear(self) -> None:
        self.pending_ms = 0
        self._drained.set()

    async def drained(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += self._samples
            await asyncio.sleep(max(0.0, self._start + self._timestamp / TRACK_RATE - time.monotonic()))
        frame = av.AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._pcm())
        frame.pts = self._timestamp
        frame.sample_rate = TRACK_RATE
        frame.time_base = fractions.Fraction(1, TRACK_RATE)
        return frame

    def _pcm(self) -> bytes:
        if self.pending_ms <= 0:
            return bytes(self._samples * 2)
        step = 2 * math.pi * TONE_HZ / TRACK_RATE
        samples = array("h", (int(TONE_AMPLITUDE * math.sin(step * (self._phase + i))) for i in range(self._samples)))
        self._phase = (self._phase + self._samples) % TRACK_RATE
        self.pending_ms = max(0, self.pending_ms - FRAME_MS)
        self.played_ms += FRAME_MS
        if self.pending_ms == 0:
            self._drained.set()
        return samples.tobytes()


# --- the data channel as a session transport ---------------------------------------------


class DataChannelTransport:
    """An open `oai-events` channel as a `connection.Transport`."""

    def __init__(self, channel: RTCDataChannel, hangup: Callable[[], None]) -> None:
        self.channel = channel
        self._hangup = hangup
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(None))

    def end(self) -> None:
        self._inbox.put_nowait(None)

    async def receive(self) -> str | bytes | None:
        return await self._inbox.get()

    async def send_text(self, text: str) -> None:
        if self.channel.readyState != "open":
            raise ConnectionError("the data channel is closed")
        self.channel.send(text)

    async def close(self, code: int, reason: str) -> None:
        # A data channel has no close code: ending the session hangs the call up.
        self._hangup()


# --- the peer ----------------------------------------------------------------------------


class CallPeer:
    """The emulator's side of one call.

    `on_channel(transport)` runs when the client's `oai-events` channel opens;
    `on_audio(pcm16)` gets the client's audio as 16-bit mono PCM at `input_rate()`.
    """

    def __init__(
        self,
        *,
        on_channel: Callable[[DataChannelTransport], Any],
        on_audio: Callable[[bytes], None],
        input_rate: Callable[[], int],
        hangup: Callable[[], None],
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = ToneTrack()
        self.transport: DataChannelTransport | None = None
        self.input_ms = 0.0  # client audio received, in milliseconds
        self._on_channel = on_channel
        self._on_audio = on_audio
        self._input_rate = input_rate
        self._hangup = hangup
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pc.on("datachannel", self._datachannel)
        self.pc.on("track", self._track)

    async def answer(self, offer: str) -> str:
        """Set the offer, answer it, and return the answer once ICE gathering is complete."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=loopback_candidates(offer), type="offer"))
        except (ValueError, KeyError, IndexError) as exc:
            raise OfferError(f"The SDP offer could not be parsed: {exc}") from exc
        if any(t.kind == "audio" for t in self.pc.getTransceivers()):
            self.pc.addTrack(self.track)  # takes the offer's audio transceiver
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    @property
    def connection_state(self) -> str:
        return str(self.pc.connectionState)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.end()
        self.track.stop()
        await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL or self.transport is not None:
            return
        self.transport = DataChannelTransport(channel, self._hangup)
        transport = self.transport
        if channel.readyState == "open":
            self._spawn(self._on_channel(transport))
        else:
            channel.once("open", lambda: self._spawn(self._on_channel(transport)))

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resampler: av.AudioResampler | None = None
        rate = 0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            if resampler is None or rate != self._input_rate():
                rate = self._input_rate()
                resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for out in resampler.resample(frame):
                pcm = bytes(out.planes[0])[: out.samples * 2]
                self.input_ms += out.samples * 1000 / rate
                self._on_audio(pcm)
