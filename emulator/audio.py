"""Audio formats, G.711 codecs, generated test tones and an energy voice-activity detector."""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass, field
from functools import cache
from typing import Any

PCM_RATE = 24_000
G711_RATE = 8_000
# One VAD analysis frame; speech start and stop positions fall on these boundaries.
VAD_FRAME_MS = 10


class AudioFormatError(ValueError):
    """The session's audio format object is not one the API accepts."""


@dataclass(frozen=True)
class AudioFormat:
    """One of the GA formats: 16-bit PCM at 24 kHz, or G.711 u-law / A-law at 8 kHz."""

    type: str
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == "audio/pcm" else 1

    @classmethod
    def parse(cls, fmt: Any) -> AudioFormat:
        """Read a session `format` object, raising `AudioFormatError` for anything else."""
        if not isinstance(fmt, dict):
            raise AudioFormatError("format must be an object")
        kind = fmt.get("type")
        if kind == "audio/pcm":
            rate = fmt.get("rate", PCM_RATE)
            if rate != PCM_RATE:
                raise AudioFormatError(f"audio/pcm supports only rate {PCM_RATE}")
            return cls(kind, PCM_RATE)
        if kind in ("audio/pcmu", "audio/pcma"):
            return cls(kind, G711_RATE)
        raise AudioFormatError(f"unsupported audio format type {kind!r}")

    def as_session_value(self) -> dict[str, Any]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}

    def samples_in(self, data: bytes) -> int:
        return len(data) // self.bytes_per_sample

    def decode(self, data: bytes) -> list[int]:
        """Linear 16-bit samples of `data` (a trailing odd byte of PCM is ignored)."""
        if self.type == "audio/pcm":
            samples = array("h")
            samples.frombytes(data[: len(data) - len(data) % 2])
            if sys.byteorder == "big":
                samples.byteswap()
            return samples.tolist()
        table = _ulaw_table() if self.type == "audio/pcmu" else _alaw_table()
        return [table[b] for b in data]

    def encode(self, samples: list[int]) -> bytes:
        if self.type == "audio/pcm":
            out = array("h", samples)
            if sys.byteorder == "big":
                out.byteswap()
            return out.tobytes()
        encoder = _ulaw_encode if self.type == "audio/pcmu" else _alaw_encode
        return bytes(encoder(s) for s in samples)


def duration_ms(samples: int, rate: int) -> float:
    return samples * 1000 / rate


# --- G.711 (ITU-T) -----------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _ulaw_encode(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), _ULAW_CLIP) + _ULAW_BIAS
    exponent = max(0, min(7, (magnitude >> 7).bit_length() - 1))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode(byte: int) -> int:
    u = ~byte & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + _ULAW_BIAS) << exponent
    magnitude -= _ULAW_BIAS
    return -magnitude if u & 0x80 else magnitude


def _alaw_encode(sample: int) -> int:
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(abs(sample), 32767)
    if magnitude >= 256:
        exponent = (magnitude >> 8).bit_length()
        value = (exponent << 4) | ((magnitude >> (exponent + 3)) & 0x0F)
    else:
        value = magnitude >> 4
    return (sign | value) ^ 0x55


def _alaw_decode(byte: int) -> int:
    a = byte ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


@cache
def _ulaw_table() -> tuple[int, ...]:
    return tuple(_ulaw_decode(b) for b in range(256))


@cache
def _alaw_table() -> tuple[int, ...]:
    return tuple(_alaw_decode(b) for b in range(256))


# --- generated audio ---------------------------------------------------------------------


@cache
def _tone_period(fmt: AudioFormat, frequency: int, amplitude: int) -> bytes:
    # 100 ms holds a whole number of cycles for any integer frequency, so periods join seamlessly.
    n = fmt.rate // 10
    samples = [round(amplitude * math.sin(2 * math.pi * frequency * i / fmt.rate)) for i in range(n)]
    return fmt.encode(samples)


def tone(ms: int, fmt: AudioFormat | None = None, *, frequency: int = 440, amplitude: int = 8000) -> bytes:
    """`ms` milliseconds of a sine tone in `fmt` (PCM 24 kHz by default); loud enough for the VAD."""
    fmt = fmt or AudioFormat("audio/pcm", PCM_RATE)
    period = _tone_period(fmt, frequency, amplitude)
    size = fmt.rate * ms // 1000 * fmt.bytes_per_sample
    reps = -(-size // len(period))
    return (period * reps)[:size]


def silence(ms: int, fmt: AudioFormat | None = None) -> bytes:
    """`ms` milliseconds of digital silence in `fmt` (PCM 24 kHz by default)."""
    fmt = fmt or AudioFormat("audio/pcm", PCM_RATE)
    return fmt.encode([0]) * (fmt.rate * ms // 1000)


# The assistant's voice: a quiet tone, so a demo listener hears that audio flows.
ASSISTANT_TONE_HZ = 220
ASSISTANT_TONE_AMPLITUDE = 1500


def assistant_audio(ms: int, fmt: AudioFormat) -> bytes:
    return tone(ms, fmt, frequency=ASSISTANT_TONE_HZ, amplitude=ASSISTANT_TONE_AMPLITUDE)


# --- voice activity detection ------------------------------------------------------------


@dataclass
class VoiceActivityDetector:
    """Energy VAD: a 10 ms frame is speech when its RMS exceeds `threshold / 50` of full scale.

    Positions are sample offsets in the session's whole input stream. `feed` returns
    `("started", position)` at the first speech frame and `("stopped", position)` once
    `silence_duration_ms` of non-speech has followed speech (position = end of that silence).
    """

    rate: int
    threshold: float = 0.5
    silence_duration_ms: int = 500
    position: int = 0
    in_speech: bool = False
    _silent_samples: int = 0
    _pending: list[int] = field(default_factory=list)

    @property
    def _frame(self) -> int:
        return self.rate * VAD_FRAME_MS // 1000

    def feed(self, samples: list[int]) -> list[tuple[str, int]]:
        changes: list[tuple[str, int]] = []
        self._pending.extend(samples)
        frame = self._frame
        gate = self.threshold / 50 * 32768
        silence_needed = self.rate * self.silence_duration_ms // 1000
        consumed = 0
        while len(self._pending) - consumed >= frame:
            chunk = self._pending[consumed : consumed + frame]
            consumed += frame
            rms = math.sqrt(sum(s * s for s in chunk) / frame)
            start = self.position
            self.position += frame
            if rms > gate:
                self._silent_samples = 0
                if not self.in_speech:
                    self.in_speech = True
                    changes.append(("started", start))
            elif self.in_speech:
                self._silent_samples += frame
                if self._silent_samples >= silence_needed:
                    self.in_speech = False
                    self._silent_samples = 0
                    changes.append(("stopped", self.position))
        del self._pending[:consumed]
        return changes

    def reset(self) -> None:
        """Forget any speech in progress (after a manual commit or clear)."""
        self.position += len(self._pending)
        self._pending.clear()
        self.in_speech = False
        self._silent_samples = 0
