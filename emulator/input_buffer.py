"""The input audio buffer and the voice-activity detector watching it.

Positions are sample offsets in the session's whole input stream, so `audio_start_ms` and
`audio_end_ms` count from the first audio the session received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emulator.audio import AudioFormat, VoiceActivityDetector
from emulator.session_config import vad_parameters


@dataclass(frozen=True)
class SpeechChange:
    kind: str  # "started" | "stopped"
    position: int  # stream sample offset
    speech_start: int  # where the committed audio begins (speech start minus prefix padding)


class InputAudioBuffer:
    def __init__(self, fmt: AudioFormat, turn_detection: dict[str, Any] | None) -> None:
        self.format = fmt
        self._data = bytearray()
        self.start = 0  # stream offset of the first buffered sample
        self._vad: VoiceActivityDetector | None = None
        self._prefix = 0
        self._speech_start = 0
        self.configure(fmt, turn_detection)

    @property
    def end(self) -> int:
        return self.start + len(self._data) // self.format.bytes_per_sample

    @property
    def in_speech(self) -> bool:
        return self._vad is not None and self._vad.in_speech

    def ms(self, samples: int) -> int:
        return round(samples * 1000 / self.format.rate)

    def configure(self, fmt: AudioFormat, turn_detection: dict[str, Any] | None) -> None:
        """Apply the session's input format and turn detection (after `session.update`)."""
        if fmt != self.format:
            self.clear()
            self.format = fmt
        if turn_detection is None:
            self._vad, self._prefix = None, 0
            return
        threshold, silence_ms, prefix_ms = vad_parameters(turn_detection)
        self._prefix = fmt.rate * prefix_ms // 1000
        vad = self._vad
        if vad is None or vad.rate != fmt.rate or (vad.threshold, vad.silence_duration_ms) != (threshold, silence_ms):
            self._vad = VoiceActivityDetector(fmt.rate, threshold, silence_ms, position=self.end)

    def append(self, data: bytes) -> list[SpeechChange]:
        """Buffer `data`; return where speech started or stopped in it (VAD on only)."""
        self._data += data
        if self._vad is None:
            return []
        changes = []
        floor = self.start  # audio before a commit point cannot join the next item
        for kind, position in self._vad.feed(self.format.decode(data)):
            if kind == "started":
                self._speech_start = max(floor, position - self._prefix)
            else:
                floor = position
            changes.append(SpeechChange(kind, position, self._speech_start))
        return changes

    def trim(self) -> None:
        """Outside speech a VAD keeps only the prefix padding it may need later."""
        if self._vad is None or self._vad.in_speech:
            return
        bps = self.format.bytes_per_sample
        excess = len(self._data) - self._prefix * bps
        if excess > 0:
            del self._data[:excess]
            self.start += excess // bps

    def take(self, end: int) -> None:
        """Drop everything up to `end` (it became a conversation item)."""
        del self._data[: (end - self.start) * self.format.bytes_per_sample]
        self.start = end

    def take_all(self) -> tuple[int, int]:
        """Empty the buffer for a manual commit; returns the (start, end) it held."""
        span = (self.start, self.end)
        self.take(self.end)
        if self._vad is not None:
            self._vad.reset()
        return span

    def clear(self) -> None:
        self.take_all()
