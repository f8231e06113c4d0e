"""The backstop of a transcription session: audio appended that no completed transcription billed.

A transcription session's usage arrives per committed item, on
`conversation.item.input_audio_transcription.completed`. Audio the client appended but never
committed, and committed audio whose transcription never completed (it failed, or the session
ended first), has no usage event; whether upstream bills it is not documented, so voxgate books
it by its duration at the transcription model's price, marked estimated (docs/pricing.md,
"Transcription sessions"). Each appended byte ends up in exactly one of: the input buffer, a
commit waiting for its item id, an item being transcribed, or gone (transcribed and billed by
its own usage, or cleared by the client); the backstop is what is left at the end in the first
three.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Final

# PCM16 mono at 24 kHz, the default (and the only PCM rate): 2 bytes x 24,000 samples a second.
PCM16_24K_BYTES_PER_SECOND: Final = 48_000
# G.711 (mu-law, A-law): 1 byte x 8,000 samples a second.
G711_BYTES_PER_SECOND: Final = 8_000
_G711_FORMATS: Final = frozenset({"audio/pcmu", "audio/pcma", "g711_ulaw", "g711_alaw"})

_AUDIO_KEY: Final = b'"audio":'


def input_bytes_per_second(session: Mapping[str, Any]) -> int | None:
    """The input audio's byte rate from a session config (`audio.input.format`, or the beta
    `input_audio_format`); None when the session does not say."""
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, Mapping) else None
    fmt: object = audio_in.get("format") if isinstance(audio_in, Mapping) else session.get("input_audio_format")
    kind = fmt.get("type") if isinstance(fmt, Mapping) else fmt
    if not isinstance(kind, str):
        return None
    return G711_BYTES_PER_SECOND if kind in _G711_FORMATS else PCM16_24K_BYTES_PER_SECOND


def appended_audio(message: bytes) -> tuple[int, int]:
    """The base64 characters and decoded bytes of the `audio` string of an undecoded
    `input_audio_buffer.append` (`policies.frames` guarantees it has no backslash, so a
    string ends at the next quote); (0, 0) when there is none. The key is the last `"audio":`
    (a key, followed by a colon): a string value such as `"event_id":"audio"` is not it, and the
    shapes the fast path accepts put the audio first or last, never inside another object."""
    key = message.rfind(_AUDIO_KEY)
    if key < 0:
        return 0, 0
    start = message.find(b'"', key + len(_AUDIO_KEY))
    end = message.find(b'"', start + 1) if start >= 0 else -1
    if end < 0:
        return 0, 0
    chars = end - start - 1
    padding = 2 if message.startswith(b"==", end - 2) else 1 if message.startswith(b"=", end - 1) else 0
    return chars, max(0, chars // 4 * 3 - padding)


def duration_ms(audio_bytes: int, bytes_per_second: int) -> int:
    """The duration of `audio_bytes` of input audio, whole milliseconds rounded up."""
    return -(-audio_bytes * 1000 // bytes_per_second)


class AudioBackstop:
    """Where a transcription session's appended audio is, by bytes, until something bills it."""

    def __init__(self) -> None:
        self.bytes_per_second = PCM16_24K_BYTES_PER_SECOND
        self.buffered = 0  # appended since the last commit or clear
        self._commits: deque[int] = deque()  # client commits not yet answered by `committed`
        self._items: dict[str, int] = {}  # committed items whose transcription has not completed
        self.booked: frozenset[str] | None = None  # after the end: the items the backstop billed

    def appended(self, audio_bytes: int) -> None:
        self.buffered += audio_bytes

    def client_commit(self) -> None:
        """The client committed: upstream, processing in order, commits exactly what came before
        (an empty buffer is refused, `input_audio_buffer_commit_empty`, and commits nothing)."""
        if self.buffered:
            self._commits.append(self.buffered)
            self.buffered = 0

    def client_clear(self) -> None:
        """The client discarded its buffer: nothing of it is transcribed, so nothing is billed."""
        self.buffered = 0

    def committed(self, item_id: str) -> None:
        """Upstream committed an item: a client commit's audio, or (server VAD) the buffer's."""
        if self._commits:
            self._items[item_id] = self._items.get(item_id, 0) + self._commits.popleft()
        else:
            self._items[item_id] = self._items.get(item_id, 0) + self.buffered
            self.buffered = 0

    def billed(self, item_id: str) -> bool:
        """The end's backstop billed this item: its usage, arriving later, must not be billed again."""
        return self.booked is not None and item_id in self.booked

    def transcribed(self, item_id: str) -> None:
        """An item's transcription completed: its own usage bills it."""
        self._items.pop(item_id, None)

    def close(self) -> int:
        """The session ended: the bytes nothing billed. Later calls return 0."""
        if self.booked is not None:
            return 0
        self.booked = frozenset(self._items)
        unbilled = self.buffered + sum(self._commits) + sum(self._items.values())
        self.buffered, self._commits, self._items = 0, deque(), {}
        return unbilled
