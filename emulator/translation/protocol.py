"""The Realtime translation session state machine (`gpt-realtime-translate`), no I/O.

Input is PCM16 24 kHz mono (the only format). The engine consumes 200 ms frames: each full
frame advances `elapsed_ms` by 200 and yields 200 ms of translated audio; a user turn (the
energy VAD: 500 ms of silence after speech) yields the transcript deltas, the source one only
when `audio.input.transcription` is set. `session.close` flushes a last partial frame (padded
to 200 ms), then `session.closed`. No event carries usage: a meter counts appended audio
(bytes / 48,000 = seconds) and may cross-check the last `elapsed_ms`.
"""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

from emulator.audio import AudioFormat, VoiceActivityDetector, assistant_audio
from emulator.errors import ProtocolError, answer_client_text, new_id
from emulator.live.settings import check_keys
from emulator.usage import transcript_for

PCM24 = AudioFormat("audio/pcm", 24_000)
FRAME_MS = 200
FRAME_BYTES = 24_000 * 2 * FRAME_MS // 1000
DEFAULT_LANGUAGE = "en"
UPDATE_SHAPE = {
    "type": None,
    "model": None,
    "audio": {
        "input": {"transcription": {"model": None}, "noise_reduction": {"type": None, "strength": None}},
        "output": {"language": None},
    },
}
NOISE_REDUCTIONS = ("near_field", "far_field")


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def translated(text: str, language: str) -> str:
    return f"[{language}] {text}"


def translation_session(session_id: str, model: str, expires_at: int, config: Any = None) -> dict[str, Any]:
    """The session resource, with `config` (a client-secret `session` or an update) applied."""
    session: dict[str, Any] = {
        "id": session_id,
        "type": "translation",
        "model": model,
        "expires_at": expires_at,
        "audio": {"output": {"language": DEFAULT_LANGUAGE}},
    }
    if config:
        apply_update(session, config, creating=True)
    return session


def apply_update(session: dict[str, Any], update: Any, *, creating: bool = False) -> None:
    """Merge a `session.update` (or creation) config; `type` and `model` are fixed."""
    config = check_keys(update, UPDATE_SHAPE, "session")
    for fixed in ("type", "model"):
        if fixed in config and config[fixed] != session[fixed] and not creating:
            raise ProtocolError.invalid(f"session.{fixed}", f"session.{fixed} cannot be changed.")
    audio = config.get("audio") or {}
    language = (audio.get("output") or {}).get("language")
    if language is not None:
        if not isinstance(language, str) or not language:
            raise ProtocolError.invalid("session.audio.output.language", "language must be a language code.")
        session["audio"]["output"]["language"] = language
    for key, value in (audio.get("input") or {}).items():
        target = session["audio"].setdefault("input", {})
        if value is None:
            target.pop(key, None)
            continue
        if key == "transcription" and not isinstance(value.get("model"), str):
            raise ProtocolError.missing("session.audio.input.transcription.model")
        if key == "noise_reduction":
            if value.get("type") not in NOISE_REDUCTIONS:
                raise ProtocolError.invalid("session.audio.input.noise_reduction.type", "Invalid noise reduction.")
            value = {"strength": 1.0, **(target.get(key) or {}), **value}
        target[key] = copy.deepcopy(value)


class TranslationProtocol:
    """One translation session; `receive_text` returns the events to send, in order."""

    def __init__(self, session: dict[str, Any], *, media_track: bool = False) -> None:
        self.session = session
        self.id = str(session["id"])
        self.media_track = media_track  # WebRTC: translated audio plays on the track
        self.client_events: list[dict[str, Any]] = []
        self.appended_bytes = 0
        self.elapsed_ms = 0
        self.playback_ms = 0
        self.closed = False
        self._pending = bytearray()
        self._vad = VoiceActivityDetector(PCM24.rate)
        self._speech_start = 0

    def open(self) -> list[dict[str, Any]]:
        return [_event("session.created", session=self.session)]

    def receive_text(self, text: str) -> list[dict[str, Any]]:
        return answer_client_text(text, self.client_events, self._dispatch)

    def receive_audio(self, pcm16: bytes) -> list[dict[str, Any]]:
        """PCM16 24 kHz input (from an append, or a WebRTC track)."""
        if self.closed:
            return []
        self.appended_bytes += len(pcm16)
        self._pending += pcm16
        events: list[dict[str, Any]] = []
        while len(self._pending) >= FRAME_BYTES:
            frame = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            events += self._frame(frame)
        return events

    def close(self) -> list[dict[str, Any]]:
        """Flush the partial frame, then `session.closed` (once)."""
        if self.closed:
            return []
        events = self._frame(bytes(self._pending) + bytes(FRAME_BYTES - len(self._pending))) if self._pending else []
        self._pending.clear()
        if self._vad.in_speech:  # an utterance still going: it ends with the session
            events += self._end_turn(self._vad.position)
        self.closed = True
        return [*events, _event("session.closed")]

    def _dispatch(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        kind = message.get("type")
        if kind == "session.update":
            apply_update(self.session, message.get("session"))
            return [_event("session.updated", session=self.session)]
        if kind == "session.input_audio_buffer.append":
            audio = message.get("audio")
            try:
                data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
            except (binascii.Error, ValueError):
                data = None
            if data is None or len(data) % 2:
                raise ProtocolError.invalid("audio", "Unsupported audio format.")
            return self.receive_audio(data)
        if kind == "session.close":
            return self.close()
        raise ProtocolError.invalid("type", f"Invalid value: '{kind}'.")

    def _frame(self, frame: bytes) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        changes = self._vad.feed(PCM24.decode(frame))
        self.elapsed_ms += FRAME_MS
        if self.media_track:
            self.playback_ms += FRAME_MS
        else:
            delta = base64.b64encode(assistant_audio(FRAME_MS, PCM24)).decode()
            fields = {"format": "pcm16", "sample_rate": PCM24.rate, "channels": 1, "elapsed_ms": self.elapsed_ms}
            events.append(_event("session.output_audio.delta", delta=delta, **fields))
        for kind, position in changes:
            if kind == "started":
                self._speech_start = position
            else:
                events += self._end_turn(position)
        return events

    def _end_turn(self, position: int) -> list[dict[str, Any]]:
        """A finished utterance: its transcript deltas (source only with transcription set)."""
        ms = round((position - self._speech_start) * 1000 / PCM24.rate)
        text = transcript_for(ms)
        events = []
        if (self.session["audio"].get("input") or {}).get("transcription"):
            events.append(_event("session.input_transcript.delta", delta=text, elapsed_ms=self.elapsed_ms))
        language = self.session["audio"]["output"]["language"]
        delta = translated(text, language)
        events.append(_event("session.output_transcript.delta", delta=delta, elapsed_ms=self.elapsed_ms))
        return events
