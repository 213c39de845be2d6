"""Stop a request's work when its client disconnects.

uvicorn does not cancel an ASGI app whose client has gone: it only answers the app's next
``receive()`` with ``http.disconnect``, and an app that has read its body never asks. So a
model service went on computing an interrogation for minutes after the entry had given up
on it (its 504, its own client gone, a cancelled job), and the entry went on for a client
that had closed its connection. :class:`CancelOnDisconnect` listens for the disconnect once
the body has been read and cancels the request's handling (vLLM's entrypoints do the same
with ``listen_for_disconnect``); the model service's scheduler then drops the request's
queued work, so it stops within one batch.

Across the boundary this needs nothing else: when the entry cancels a call to a model
service, its HTTP client closes that connection, which is the model service's disconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

# Sent after cancelling (nginx's "client closed request"); nobody reads it, but BentoML's
# timeout middleware waits for a response to start before it lets the request go.
CLIENT_CLOSED = 499


class CancelOnDisconnect:
    """ASGI middleware: cancel the app's handling of a request whose client disconnected."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _Watched(receive, send)
        handling = asyncio.ensure_future(self.app(scope, request.receive, request.send))
        request.on_disconnect = handling.cancel
        try:
            await handling
        except asyncio.CancelledError:
            if not request.disconnected:
                raise  # cancelled from outside (shutdown, a timeout): not ours to swallow
            logger.debug(
                "%s %s: the client disconnected; its work was cancelled",
                scope.get("method"),
                scope.get("path"),
            )
            if not request.response_started:
                await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
                await send({"type": "http.response.body", "body": b""})
        finally:
            request.stop_watching()


class _Watched:
    """One request's ASGI channels; once its body is read, a watcher waits for the client
    to disconnect before the answer is complete, and then calls ``on_disconnect``."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.on_disconnect: Callable[[], object] = lambda: None
        self.disconnected = False
        self.response_started = False
        self._response_complete = False
        self._gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        if self._watcher is not None:
            # The app asks again after its body (to learn of a disconnect): the watcher
            # reads the connection now, so answer with what it sees.
            await self._gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._client_gone()
        elif not message.get("more_body", False):
            self._watcher = asyncio.ensure_future(self._watch())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self._response_complete = True
        await self._send(message)

    async def _watch(self) -> None:
        message = await self._receive()
        # uvicorn also answers "disconnect" once the response is complete: not a client gone.
        if message["type"] == "http.disconnect" and not self._response_complete:
            self._client_gone()

    def _client_gone(self) -> None:
        self.disconnected = True
        self._gone.set()
        self.on_disconnect()

    def stop_watching(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
