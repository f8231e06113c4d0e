"""`/v1/realtime` over ASGI: admission before the upgrade, then a metered relay.

This is one transport shell around `LiveSession`. Admission (credentials, upstream
connect) happens before the client's upgrade is accepted, so refusals are real HTTP
responses with OpenAI-shaped bodies (the ASGI `websocket.http.response` extension).
After the upgrade, two pumps move messages and a ticker drives time-based policy.
Close codes are documented in docs/close-codes.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from gateway.admission import abandon, admit, start_live_session
from gateway.errors import GatewayError
from gateway.live_session import LiveSession, Verdict
from gateway.services import GatewayServices
from gateway.upstream import open_upstream
from policies.actions import CloseSession
from policies.governor import CLOSE_BAD_GATEWAY, CLOSE_INTERNAL_ERROR

log = logging.getLogger("voxgate.relay")

Scope = dict[str, Any]
TICK_SECONDS = 1.0
# Close codes an endpoint may not put on the wire; an upstream that "sent" one really dropped.
_UNSENDABLE = {1004, 1005, 1006, 1015}


async def deny(send: Any, scope: Scope, error: GatewayError) -> None:
    """Refuse a WebSocket before the upgrade with an HTTP response (or 1008 if unsupported)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": error.body_bytes()})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})


class RelayEnded(Exception):
    """Carries how a relay ended: the close to send the client and the session end reason."""

    def __init__(self, code: int, reason: str, end_reason: str, detail: str | None = None) -> None:
        super().__init__(end_reason)
        self.code, self.reason, self.end_reason, self.detail = code, reason, end_reason, detail


class AsgiRelay:
    """One proxied session: client (ASGI) <-> voxgate <-> upstream (websockets)."""

    def __init__(self, live: LiveSession, upstream: ClientConnection, receive: Any, send: Any) -> None:
        self.live = live
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self._client_lock = asyncio.Lock()
        self._stop: asyncio.Future[RelayEnded] = asyncio.get_running_loop().create_future()

    def shutdown(self, code: int, reason: str, end_reason: str) -> None:
        if not self._stop.done():
            self._stop.set_result(RelayEnded(code, reason, end_reason))

    async def deliver(self, verdict: Verdict) -> None:
        """A verdict that arrived later (a budget answer, a broadcast): send it, close if asked."""
        try:
            for message in verdict.to_upstream:
                await self.upstream.send(message)
            for message in verdict.to_client:
                await self._to_client(message)
        except ConnectionClosed:
            pass
        if verdict.close is not None:
            self.shutdown(verdict.close.code, verdict.close.reason, verdict.close.end_reason)

    async def _to_client(self, text: str | bytes) -> None:
        async with self._client_lock:
            if isinstance(text, str):
                await self.send({"type": "websocket.send", "text": text})
            else:
                await self.send({"type": "websocket.send", "bytes": text})

    async def _apply(self, verdict: Verdict, original: str | bytes, toward_upstream: bool) -> None:
        if verdict.forward:
            if toward_upstream:
                await self.upstream.send(original)
            else:
                await self._to_client(original)
        for message in verdict.to_upstream:
            await self.upstream.send(message)
        for message in verdict.to_client:
            await self._to_client(message)
        if verdict.close is not None:
            close: CloseSession = verdict.close
            raise RelayEnded(close.code, close.reason, close.end_reason)

    async def _client_pump(self) -> RelayEnded:
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is not None:
                    await self._apply(self.live.from_client(data), data, toward_upstream=True)
                else:
                    data = message.get("bytes") or b""
                    await self._apply(self.live.from_client(data, binary=True), data, toward_upstream=True)
            elif kind == "websocket.disconnect":
                return RelayEnded(1000, "", "client_closed", f"client close code {message.get('code')}")

    async def _upstream_pump(self) -> RelayEnded:
        try:
            async for data in self.upstream:
                verdict = self.live.from_upstream(data, binary=isinstance(data, bytes))
                await self._apply(verdict, data, toward_upstream=False)
        except ConnectionClosedOK:
            pass
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return RelayEnded(CLOSE_BAD_GATEWAY, "upstream connection lost", "upstream_error", str(exc))
            code = exc.rcvd.code
            return RelayEnded(code if code not in _UNSENDABLE else CLOSE_BAD_GATEWAY, exc.rcvd.reason,
                              "upstream_error", f"upstream close code {code}")  # fmt: skip
        rcvd = self.upstream.close_code
        reason = self.upstream.close_reason or ""
        code = rcvd if rcvd is not None and rcvd not in _UNSENDABLE else 1000
        return RelayEnded(code, reason, "upstream_closed", f"upstream close code {rcvd}")

    async def _ticker(self) -> RelayEnded:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            verdict = self.live.tick()
            if verdict is not None and (verdict.to_client or verdict.to_upstream or verdict.close):
                await self._apply(verdict, b"", toward_upstream=True)

    async def run(self) -> RelayEnded:
        tasks = [
            asyncio.create_task(self._client_pump()),
            asyncio.create_task(self._upstream_pump()),
            asyncio.create_task(self._ticker()),
        ]
        try:
            done, _ = await asyncio.wait([*tasks, self._stop], return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            try:
                ended = first.result()
            except RelayEnded as exc:
                ended = exc
            except ConnectionClosed as exc:  # the upstream went away while we were sending to it
                ended = RelayEnded(CLOSE_BAD_GATEWAY, "upstream connection lost", "upstream_error", str(exc))
            except Exception as exc:  # a bug in voxgate must still end the session cleanly
                log.exception("relay failed for session %s", self.live.session_id)
                ended = RelayEnded(CLOSE_INTERNAL_ERROR, "gateway error", "gateway_error", type(exc).__name__)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return ended

    async def close_both(self, ended: RelayEnded) -> None:
        if ended.end_reason != "client_closed":
            with contextlib.suppress(Exception):
                await self.send({"type": "websocket.close", "code": ended.code, "reason": ended.reason[:120]})
        with contextlib.suppress(Exception):
            await self.upstream.close(1000 if ended.end_reason != "upstream_error" else 1001)


class RealtimeEndpoint:
    """The ASGI app mounted at `/v1/realtime`."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        services: GatewayServices = scope["app"].state.services
        if scope["type"] != "websocket":
            await _http_refusal(send, GatewayError(
                400, "The Realtime API at this path is a WebSocket; for WebRTC use POST /v1/realtime/calls.",
                code="websocket_required"))  # fmt: skip
            return
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        try:
            await self._serve(services, scope, receive, send)
        except GatewayError as error:
            services.metrics.refusals.labels(error.code or "none", str(error.status)).inc()
            await deny(send, scope, error)

    async def _serve(self, services: GatewayServices, scope: Scope, receive: Any, send: Any) -> None:
        admission = await admit(services, scope["headers"], scope.get("subprotocols") or [],
                                scope.get("query_string", b""))  # fmt: skip
        try:
            upstream = await open_upstream(services.settings.upstream, admission.query, admission.safety_id,
                                           admission.beta)  # fmt: skip
        except BaseException:
            await abandon(services, admission)
            raise
        live = start_live_session(services, admission)
        relay = AsgiRelay(live, upstream, receive, send)
        services.live.add(relay)
        live.attach(relay.deliver)
        try:
            await send({
                "type": "websocket.accept",
                "subprotocol": admission.subprotocol,
                "headers": [(b"x-voxgate-session-id", live.session_id.encode())],
            })  # fmt: skip
            ended = await relay.run()
            live.end(ended.end_reason, ended.detail)
            await relay.close_both(ended)
        finally:
            live.end("gateway_error", "relay exited unexpectedly")  # no-op when already ended
            services.live.discard(relay)
            with contextlib.suppress(Exception):
                await upstream.close()
            await live.aclose()


async def _http_refusal(send: Any, error: GatewayError) -> None:
    headers = [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body_bytes()})
