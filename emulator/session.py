"""The per-connection protocol state machine: client events in, server events out.

`SessionProtocol` does no I/O and reads no clock (the creation time is passed in). The
connection feeds it every text frame (`receive_text`), sends what it returns, drives the
`ResponseRun`s it starts (`take_started`), and calls `expire()` when the session's time is up.
"""

from __future__ import annotations

from typing import Any

from emulator.audio import AudioFormat
from emulator.config import EmulatorConfig, RateLimits
from emulator.conversation import Conversation, Item, client_item, decode_audio, user_audio_item
from emulator.errors import ProtocolError, answer_client_text, error_event, new_id
from emulator.event_types import CLIENT_EVENTS
from emulator.input_buffer import InputAudioBuffer
from emulator.responses import ResponseRun
from emulator.session_config import (
    SessionLocks,
    default_realtime_session,
    default_transcription_session,
    merge_update,
    response_settings,
)
from emulator.usage import transcript_for, transcription_usage

MIN_COMMIT_MS = 100


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def expiry_message(seconds: float) -> str:
    span = f"{int(seconds // 60)} minutes" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} seconds"
    return f"Your session hit the maximum duration of {span}."


class SessionProtocol:
    """One Realtime session (`intent` "realtime" or "transcription")."""

    def __init__(
        self,
        *,
        config: EmulatorConfig,
        rate_limits: RateLimits,
        now: float,
        model: str | None,
        intent: str = "realtime",
        session_id: str | None = None,
        webrtc: bool = False,
    ) -> None:
        self.id = session_id or new_id("sess")
        self.webrtc = webrtc  # audio on a media track; `output_audio_buffer.*` apply
        self.config = config
        self.rate_limits = rate_limits
        expires_at = int(now + config.max_session_seconds)
        if intent == "transcription":
            self.session = default_transcription_session(self.id, expires_at)
        else:
            self.session = default_realtime_session(
                self.id, model or config.default_model, config.default_instructions, expires_at
            )
        # A model named in the URL is final; without one, the first session.update may pick it.
        self.locks = SessionLocks(model_fixed=model is not None)
        self.conversation = Conversation(new_id("conv"))
        self.client_events: list[dict[str, Any]] = []
        self.active: ResponseRun | None = None  # the response writing to the conversation
        self.runs: dict[str, ResponseRun] = {}
        self._started: list[ResponseRun] = []
        self._previous_context: list[Any] = []
        self._speech_item: str | None = None
        self.last_response_id: str | None = None
        audio_input = self.session["audio"]["input"]
        self.buffer = InputAudioBuffer(AudioFormat.parse(audio_input["format"]), audio_input["turn_detection"])

    # --- public surface ------------------------------------------------------------------

    @property
    def is_transcription(self) -> bool:
        return bool(self.session["type"] == "transcription")

    def open(self) -> list[dict[str, Any]]:
        """The events a new connection starts with."""
        events = [_event("session.created", session=self.session)]
        if not self.is_transcription:
            events.append(
                _event(
                    "conversation.created", conversation={"id": self.conversation.id, "object": "realtime.conversation"}
                )
            )
        return events

    def receive_text(self, text: str) -> list[dict[str, Any]]:
        return answer_client_text(text, self.client_events, self._dispatch)

    def receive_bytes(self) -> list[dict[str, Any]]:
        return [error_event("Binary frames are not supported; send JSON text frames.", code="invalid_value")]

    def configure(self, update: Any) -> None:
        """Apply a session config given at creation (client secret, `/calls`); may raise `ProtocolError`."""
        self._on_session_update({"type": "session.update", "session": update})

    def receive_audio(self, pcm16: bytes) -> list[dict[str, Any]]:
        """Input audio from a media track: 16-bit mono PCM at the input buffer's rate."""
        fmt = self.buffer.format
        data = pcm16 if fmt.type == "audio/pcm" else fmt.encode(AudioFormat("audio/pcm", fmt.rate).decode(pcm16))
        return self._append(data)

    def audio_started(self, response_id: str) -> dict[str, Any]:
        return _event("output_audio_buffer.started", response_id=response_id)

    def audio_stopped(self, response_id: str) -> dict[str, Any]:
        return _event("output_audio_buffer.stopped", response_id=response_id)

    def audio_cleared(self, response_id: str) -> dict[str, Any]:
        return _event("output_audio_buffer.cleared", response_id=response_id)

    def take_started(self) -> list[ResponseRun]:
        """Responses started since the last call; the connection streams each one."""
        started, self._started = self._started, []
        return started

    def expire(self) -> list[dict[str, Any]]:
        """The session ran out of time: stop every response and say so."""
        for run in list(self.runs.values()):
            run.abandon()
        self.runs.clear()
        self.active = None
        return [error_event(expiry_message(self.config.max_session_seconds), code="session_expired")]

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ProtocolError.missing("type")
        if kind not in CLIENT_EVENTS:
            raise ProtocolError.invalid(
                "type", f"Invalid value: '{kind}'. Supported values are: " + ", ".join(f"'{k}'" for k in CLIENT_EVENTS)
            )
        handler = getattr(self, "_on_" + kind.replace(".", "_"))
        result: list[dict[str, Any]] = handler(event)
        return result

    def _on_session_update(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "session" not in event:
            raise ProtocolError.missing("session")
        self.session = merge_update(self.session, event["session"], self.locks)
        if "model" in event["session"]:
            self.locks.model_fixed = True
        audio_input = self.session["audio"]["input"]
        self.buffer.configure(AudioFormat.parse(audio_input["format"]), audio_input["turn_detection"])
        return [_event("session.updated", session=self.session)]

    def _on_input_audio_buffer_append(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        data = decode_audio(event.get("audio"), "audio")
        if len(data) % self.buffer.format.bytes_per_sample:
            raise ProtocolError.invalid("audio", "Invalid 'audio': expected whole 16-bit samples.")
        return self._append(data)

    def _append(self, data: bytes) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for change in self.buffer.append(data):
            if change.kind == "started":
                events += self._speech_started(change.position)
            else:
                events += self._speech_stopped(change.speech_start, change.position)
        self.buffer.trim()
        return events

    def _on_input_audio_buffer_commit(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        ms = (self.buffer.end - self.buffer.start) * 1000 / self.buffer.format.rate
        if ms < MIN_COMMIT_MS:
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item or new_id("item")
        start, end = self.buffer.take_all()
        events = self._commit(start, end, item_id)
        turn = self.session["audio"]["input"]["turn_detection"]
        if turn and turn.get("create_response", True):
            events += self._auto_response()
        return events

    def _on_input_audio_buffer_clear(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.buffer.clear()
        self._speech_item = None
        return [_event("input_audio_buffer.cleared")]

    def _on_conversation_item_create(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self._require_realtime(event["type"])
        item = client_item(event.get("item"), self.buffer.format)
        previous = self.conversation.add(item, event.get("previous_item_id"))
        return [
            _event("conversation.item.added", previous_item_id=previous, item=item.wire()),
            _event("conversation.item.done", previous_item_id=previous, item=item.wire()),
        ]

    def _on_conversation_item_retrieve(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [_event("conversation.item.retrieved", item=self.conversation.get(event.get("item_id")).wire())]

    def _on_conversation_item_truncate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        item = self.conversation.get(event.get("item_id"))
        index, end_ms = event.get("content_index"), event.get("audio_end_ms")
        if not isinstance(index, int) or not isinstance(end_ms, int) or end_ms < 0:
            raise ProtocolError.missing("content_index" if not isinstance(index, int) else "audio_end_ms")
        if item.data.get("role") != "assistant" or not item.audio_ms:
            raise ProtocolError.invalid("item_id", "Only assistant messages with audio can be truncated.")
        if end_ms > item.audio_ms:
            raise ProtocolError.invalid(
                "audio_end_ms", f"audio_end_ms ({end_ms}) is longer than the item's audio ({item.audio_ms} ms)."
            )
        item.audio_ms = end_ms
        for part in item.data.get("content", []):
            if part.get("type") == "output_audio" and part.get("transcript"):
                part["transcript"] = part["transcript"][: end_ms // 50]
        return [_event("conversation.item.truncated", item_id=item.id, content_index=index, audio_end_ms=end_ms)]

    def _on_conversation_item_delete(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        item = self.conversation.delete(event.get("item_id"))
        return [_event("conversation.item.deleted", item_id=item.id)]

    def _on_response_create(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self._require_realtime(event["type"])
        settings = response_settings(self.session, event.get("response"))
        if settings.conversation == "auto" and self.active is not None:
            raise ProtocolError(
                f"Conversation already has an active response in progress: {self.active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        if settings.input is None:
            context = list(self.conversation.items)
        else:
            context = [self._input_item(entry, i) for i, entry in enumerate(settings.input)]
        return self._start(settings, context)

    def _on_response_cancel(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        response_id = event.get("response_id")
        run = self.runs.get(response_id) if isinstance(response_id, str) else self.active
        if run is None or run.finished:
            raise ProtocolError("Cancellation failed: no active response found.", code="response_cancel_not_active")
        return run.cancel("client_cancelled")

    def _on_output_audio_buffer_clear(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webrtc:
            return [self.audio_cleared(self.last_response_id or new_id("resp"))]
        raise ProtocolError.invalid("type", "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.")

    # --- internals -----------------------------------------------------------------------

    def _require_realtime(self, kind: str) -> None:
        if self.is_transcription:
            raise ProtocolError.invalid("type", f"'{kind}' is not supported in a transcription session.")

    def _speech_started(self, position: int) -> list[dict[str, Any]]:
        self._speech_item = new_id("item")
        events = [
            _event(
                "input_audio_buffer.speech_started", audio_start_ms=self.buffer.ms(position), item_id=self._speech_item
            )
        ]
        turn = self.session["audio"]["input"]["turn_detection"] or {}
        if self.active is not None and turn.get("interrupt_response", True):
            events += self.active.cancel("turn_detected")
        return events

    def _speech_stopped(self, start: int, position: int) -> list[dict[str, Any]]:
        item_id = self._speech_item or new_id("item")
        events = [_event("input_audio_buffer.speech_stopped", audio_end_ms=self.buffer.ms(position), item_id=item_id)]
        self.buffer.take(position)
        events += self._commit(start, position, item_id)
        turn = self.session["audio"]["input"]["turn_detection"] or {}
        if turn.get("create_response", True):
            events += self._auto_response()
        return events

    def _commit(self, start: int, end: int, item_id: str) -> list[dict[str, Any]]:
        """Turn the stream's samples [start, end) into a user audio item."""
        self._speech_item = None
        audio_ms = self.buffer.ms(end - start)
        item = user_audio_item(item_id, audio_ms)
        previous = self.conversation.add(item)
        events = [
            _event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            _event("conversation.item.added", previous_item_id=previous, item=item.wire()),
        ]
        transcription = self.session["audio"]["input"].get("transcription")
        if transcription:
            events += self._transcribe(item, transcription)
        events.append(_event("conversation.item.done", previous_item_id=previous, item=item.wire()))
        return events

    def _transcribe(self, item: Item, transcription: dict[str, Any]) -> list[dict[str, Any]]:
        model = str(transcription["model"])
        transcript = transcript_for(item.audio_ms)
        # whisper-1 sends the whole transcript as one delta; streaming models send words.
        pieces = [transcript] if model == "whisper-1" else [w + " " for w in transcript.split(" ")]
        pieces[-1] = pieces[-1].rstrip(" ")
        common = {"item_id": item.id, "content_index": 0}
        events = [_event("conversation.item.input_audio_transcription.delta", **common, delta=p) for p in pieces]
        usage = transcription_usage(model, item.audio_ms, transcript, transcription.get("prompt") or "")
        events.append(
            _event(
                "conversation.item.input_audio_transcription.completed", **common, transcript=transcript, usage=usage
            )
        )
        item.data["content"][0]["transcript"] = transcript
        return events

    def _auto_response(self) -> list[dict[str, Any]]:
        # A VAD turn starts a response unless one is still writing to the conversation.
        if self.is_transcription or self.active is not None:
            return []
        return self._start(response_settings(self.session, None), list(self.conversation.items))

    def _input_item(self, entry: Any, index: int) -> Item:
        param = f"response.input[{index}]"
        if isinstance(entry, dict) and entry.get("type") == "item_reference":
            return self.conversation.get(entry.get("id"), f"{param}.id")
        return client_item(entry, self.buffer.format, param)

    def _start(self, settings: Any, context: list[Item]) -> list[dict[str, Any]]:
        run = ResponseRun(
            settings,
            context_items=context,
            previous_context=self._previous_context,
            conversation=self.conversation if settings.conversation == "auto" else None,
            rate_limits=self.rate_limits,
            locks=self.locks,
            on_finish=self._finished,
        )
        self._previous_context = run.context
        self.locks.model_fixed = True
        self.runs[run.id] = run
        self.last_response_id = run.id
        if settings.conversation == "auto":
            self.active = run
        self._started.append(run)
        return run.start()

    def _finished(self, run: ResponseRun) -> None:
        self.runs.pop(run.id, None)
        if self.active is run:
            self.active = None
        self.rate_limits.finish_response(int((run.usage or {}).get("total_tokens", 0)))
