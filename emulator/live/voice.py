"""The voice path of a GPT-Live session: input audio, turns, and the assistant's speech.

The session timeline is the input stream: `start_ms`/`end_ms` count from the first input
sample. An energy VAD (threshold 0.5, 500 ms of silence) ends a user turn; the assistant
speaks each reply character for 50 ms, in 200 ms audio deltas. Sidebands get input audio
reflected as PCM16 24 kHz (before muting) and output audio with its timeline range.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from emulator.audio import AudioFormat, VoiceActivityDetector, assistant_audio
from emulator.errors import new_id
from emulator.usage import OUTPUT_AUDIO_MS_PER_CHAR

REFLECTION_RATE = 24_000
AUDIO_CHUNK_MS = 200
PCM24 = AudioFormat("audio/pcm", REFLECTION_RATE)

# (audience, event): "all" goes to the primary transport and every sideband.
Out = tuple[str, dict[str, Any]]


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def live_format(fmt: dict[str, Any]) -> AudioFormat:
    """An `AudioFormat` for a Live `audio.format` (PCM at 16 or 24 kHz, G.711 at 8 kHz)."""
    return AudioFormat(str(fmt["type"]), int(fmt.get("rate") or 8000))


def resample(samples: list[int], rate: int, target: int) -> list[int]:
    """Nearest-sample resampling: enough for reflected test audio."""
    if rate == target or not samples:
        return samples
    count = len(samples) * target // rate
    return [samples[min(len(samples) - 1, i * rate // target)] for i in range(count)]


@dataclass(frozen=True)
class Turn:
    start_ms: int
    end_ms: int


class VoicePath:
    """Input audio in, finished user turns out; replies become transcript and audio events."""

    def __init__(self, fmt: AudioFormat, *, websocket: bool) -> None:
        self.format = fmt
        self.websocket = websocket  # WebRTC and SIP speak on the media track instead
        self._vad = VoiceActivityDetector(fmt.rate)
        self._speech_start = 0
        self.speech_started = False  # set when the last feed began a turn (wakes a paused session)
        self.speaking_until_ms = 0
        self.playback_ms = 0  # WebRTC: audio the shell should play on the track

    @property
    def timeline_ms(self) -> int:
        return round(self._vad.position * 1000 / self.format.rate)

    def feed(self, data: bytes, *, muted: bool) -> tuple[list[Turn], list[Out]]:
        """Raw input in the session format: the turns it ended, and its sideband reflection."""
        samples = self.format.decode(data)
        reflected = PCM24.encode(resample(samples, self.format.rate, REFLECTION_RATE))
        outs: list[Out] = [("sideband", {"type": "session.input_audio.append", "audio": _b64(reflected)})]
        turns = []
        self.speech_started = False
        for kind, position in self._vad.feed([0] * len(samples) if muted else samples):
            if kind == "started":
                self._speech_start = position
                self.speech_started = True
            else:
                rate = self.format.rate
                turns.append(Turn(round(self._speech_start * 1000 / rate), round(position * 1000 / rate)))
        return turns, outs

    def speak(self, text: str, after_ms: int, client_event_id: str | None = None) -> tuple[int, int, list[Out]]:
        """The assistant says `text` from `after_ms` on: (start_ms, end_ms, transcript and audio events)."""
        start = max(after_ms, self.speaking_until_ms)
        total = len(text) * OUTPUT_AUDIO_MS_PER_CHAR
        end = start + total
        self.speaking_until_ms = end
        extra = {"client_event_id": client_event_id} if client_event_id else {}
        outs: list[Out] = [
            ("all", event("session.output_transcript.delta", delta=text, start_ms=start, end_ms=end, **extra))
        ]
        for offset in range(0, total, AUDIO_CHUNK_MS):
            ms = min(AUDIO_CHUNK_MS, total - offset)
            if self.websocket:
                outs.append(
                    ("primary", {"type": "session.output_audio.delta", "delta": _b64(assistant_audio(ms, self.format))})
                )
            delta = _b64(assistant_audio(ms, PCM24))
            reflection = {"type": "session.output_audio.delta", "delta": delta, "start_ms": start + offset}
            reflection["end_ms"] = start + offset + ms
            outs.append(("sideband", reflection))
        if not self.websocket:
            self.playback_ms += total
        return start, end, outs

    def take_playback(self) -> int:
        ms, self.playback_ms = self.playback_ms, 0
        return ms


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
