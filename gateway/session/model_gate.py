"""A transcription session's model, counted under its per-model cap once a `session.update` names it.

A `/v1/realtime?intent=transcription` session is admitted without a model (it arrives after the
upgrade), so its lease counts only toward the tenant's cap. When a policed client `session.update`
names a transcription model (`session.audio.input.transcription.model`) other than the one the lease
counts under, `ModelGate` holds that update, and every client message after it (audio included, so
nothing overtakes it), while the lease is counted under the model (`LeaseKeeper.lease_model`). The
relay stops reading the client meanwhile (`LiveSession.holding_client`): what the client sends waits
in its socket (TCP back-pressure), so voxgate holds at most the rest of the read that carried the
update, however long Redis takes. Counted: the update goes upstream, then what was held, in order.
At the model's cap (`max_concurrent_sessions_per_model`), or with the shared state unreachable under
`fail_closed`: a GA `error` naming the param and close 4010 (docs/close-codes.md); nothing held goes
upstream. The lease (and its model) is given back when the session ends, as for any session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from gateway.ids import new_id
from gateway.session.verdict import Verdict, encode
from policies.actions import CloseSession, ErrorDetail, error_event
from policies.admission import Refuse
from policies.metering import read_session_config
from policies.policy import TenantPolicy

log = logging.getLogger("voxgate.session")

PARAM: Final = "session.audio.input.transcription.model"
CLOSE_REFUSED: Final = 4010
Message = str | bytes


class ModelLeaser(Protocol):
    """What the gate needs of the shared state (`gateway.session.leases.LeaseKeeper`)."""

    async def lease_model(
        self, tenant_id: str, session_id: str, policy: TenantPolicy, model: str, now: float, param: str | None = None
    ) -> Refuse | None: ...


def transcription_model(event: Mapping[str, Any]) -> str | None:
    """The transcription model a client `session.update` names (None: it names none)."""
    session = event.get("session")
    if event.get("type") != "session.update" or not isinstance(session, Mapping):
        return None
    return read_session_config(session).transcription_model


def _text(message: Message) -> str:
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


class ModelGate:
    """One transcription session's model lease; `pending` while a lease is being counted."""

    def __init__(self, leases: ModelLeaser, tenant_id: str, session_id: str) -> None:
        self.leases, self.tenant_id, self.session_id = leases, tenant_id, session_id
        self.model: str | None = None  # what the lease counts under
        self.pending = False
        self.queued: list[tuple[Message, bool]] = []  # client messages behind the held update
        self._task: asyncio.Task[None] | None = None

    def wants(self, event: Mapping[str, Any], verdict: Verdict) -> str | None:
        """The model to count under before `verdict` (the update's) is carried out; None: carry it out now."""
        if not (verdict.forward or verdict.to_upstream) or verdict.close is not None:
            return None  # refused (or closing): nothing goes upstream
        model = transcription_model(event)
        return model if model is not None and model != self.model else None

    def hold(
        self,
        model: str,
        verdict: Verdict,
        message: Message,
        event: Mapping[str, Any],
        policy: TenantPolicy,
        now: float,
        replay: Callable[[Message, bool], Verdict],
        deliver: Callable[[Verdict], Any] | None,
    ) -> None:
        """Hold the update (its `verdict`) until the lease is counted under `model`, then deliver."""
        self.pending = True
        client_id = event.get("event_id")
        client_event_id = client_id if isinstance(client_id, str) else None
        self._task = asyncio.create_task(
            self._count(model, verdict, _text(message), client_event_id, policy, now, replay, deliver),
            name=f"voxgate-model-lease-{self.session_id}",
        )

    async def _count(
        self,
        model: str,
        verdict: Verdict,
        message: str,
        client_event_id: str | None,
        policy: TenantPolicy,
        now: float,
        replay: Callable[[Message, bool], Verdict],
        deliver: Callable[[Verdict], Any] | None,
    ) -> None:
        try:
            refused = await self.leases.lease_model(self.tenant_id, self.session_id, policy, model, now, PARAM)
        except Exception:  # never forward an uncounted model
            log.exception("counting session %s under %s failed", self.session_id, model)
            message_ = "Shared session state is unavailable; retry shortly."
            refused = Refuse(503, "live_state_unavailable", message_, type="server_error", retry_after=1.0)
        if refused is not None:
            self.queued = []  # the session closes: nothing behind the update goes upstream
            detail = ErrorDetail(refused.message, refused.type, refused.code, refused.param, client_event_id)
            close = CloseSession(CLOSE_REFUSED, "session.update refused", "start_refused")
            result = Verdict(forward=False, to_client=(encode(error_event(detail, new_id("vgev"))),), close=close)
        else:
            self.model = model
            result = self._release(verdict, message, replay)
        if deliver is not None:
            await deliver(result)

    def _release(self, verdict: Verdict, message: str, replay: Callable[[Message, bool], Verdict]) -> Verdict:
        """The update, then the held messages in order (until one needs another model counted)."""
        self.pending = False
        to_upstream = [*([message] if verdict.forward else []), *verdict.to_upstream]
        to_client = list(verdict.to_client)
        close = verdict.close
        held, self.queued = self.queued, []
        while held and close is None:
            queued, binary = held.pop(0)
            outcome = replay(queued, binary)
            to_upstream += [*([_text(queued)] if outcome.forward else []), *outcome.to_upstream]
            to_client += outcome.to_client
            close = outcome.close
            if self.pending:  # another model to count: the rest waits behind that update
                self.queued.extend(held)
                break
        return Verdict(forward=False, to_client=tuple(to_client), to_upstream=tuple(to_upstream), close=close)

    async def settled(self) -> None:
        """Wait for a lease being counted (before the lease is given back, so it is not re-taken)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
