"""What the emulator's WebRTC surface remembers: the client secrets it minted and the calls it answered."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from emulator.connection import EmulatedSession
from emulator.sideband import Sideband
from emulator.webrtc import CallPeer

EPHEMERAL_PREFIX = "ek_"
DEFAULT_SECRET_SECONDS = 600
MIN_SECRET_SECONDS, MAX_SECRET_SECONDS = 10, 7200


@dataclass
class MintedSecret:
    """One `client_secrets` answer: the request body as sent and the session it minted."""

    value: str
    expires_at: int
    request: dict[str, Any]
    session: dict[str, Any]
    headers: dict[str, str]

    def valid(self, now: float) -> bool:
        return now < self.expires_at


@dataclass(eq=False)
class EmulatedCall:
    """One WebRTC call.

    `form` is "multipart" or "sdp" (raw `application/sdp`); `ephemeral_key` is the `ek_` value
    the offer was posted with, if any; `hung_up` is set by the hangup endpoint, `ended` by any
    end (hangup, the client closing, session expiry, `emu.stop()`).
    """

    call_id: str
    session: EmulatedSession
    form: str
    ephemeral_key: str | None
    headers: dict[str, str]
    offer: str
    answer: str = ""
    peer: CallPeer | None = None
    hung_up: bool = False
    ended: bool = False
    sidebands: list[Sideband] = field(default_factory=list)
    _ending: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.call_id

    @property
    def connection_state(self) -> str:
        return self.peer.connection_state if self.peer is not None else "new"
