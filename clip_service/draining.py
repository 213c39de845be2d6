"""Graceful shutdown of the services that ``bentoml serve`` runs together.

On SIGTERM the circus arbiter sends SIGTERM to every worker at once, and uvicorn in each
stops serving. Requests in flight in the entry service then fail on their next call to a
model service that is already gone. :class:`GracefulShutdown` changes that order:

* the entry service stops listening at once (new connections are refused: the arbiter's
  copy of the listening socket would otherwise queue them unanswered) and lets uvicorn
  finish the requests in flight, which ``REQUEST_TIMEOUT_S`` bounds;
* a model service keeps serving until no request has been in flight for
  ``SHUTDOWN_QUIET_S`` seconds (the entry service has finished its requests), or until
  ``max_drain_s``, and only then lets uvicorn shut down.

A second SIGTERM skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from types import FrameType
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

Role = Literal["entry", "model"]


class GracefulShutdown:
    """ASGI middleware that takes over uvicorn's SIGTERM handler (see the module doc)."""

    def __init__(
        self, app: ASGIApp, role: Role, quiet_s: float = 0, max_drain_s: float = 0
    ) -> None:
        """``quiet_s`` and ``max_drain_s`` apply to the ``model`` role."""
        self.app, self.role = app, role
        self.quiet_s, self.max_drain_s = quiet_s, max_drain_s
        self.in_flight = 0
        self.last_done = time.monotonic()
        self._installed = False
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and not self._installed:
            self._install()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.last_done = time.monotonic()

    def _install(self) -> None:
        """Replace uvicorn's handler, installed before the app's lifespan starts."""
        self._installed = True
        uvicorn_exit = signal.getsignal(signal.SIGTERM)
        server = getattr(uvicorn_exit, "__self__", None)
        if not hasattr(server, "should_exit"):  # not served by uvicorn: nothing to order
            return
        loop = asyncio.get_running_loop()

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._start_drain, server, sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _start_drain(self, server: object, sig: int, frame: FrameType | None) -> None:
        if self._tasks:  # a second SIGTERM: stop draining now
            server.handle_exit(sig, frame)  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(self._drain(server, sig, frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, server: object, sig: int, frame: FrameType | None) -> None:
        if self.role == "entry":
            _stop_listening(server)
            logger.info(
                "SIGTERM: refusing new connections, finishing %d request(s)", self.in_flight
            )
        else:
            deadline = time.monotonic() + self.max_drain_s
            logger.info("SIGTERM: serving until idle for %.1f s", self.quiet_s)
            while time.monotonic() < deadline and (
                self.in_flight or time.monotonic() - self.last_done < self.quiet_s
            ):
                await asyncio.sleep(0.1)
        server.handle_exit(sig, frame)  # type: ignore[attr-defined]


def _stop_listening(server: object) -> None:
    """Shut down the listening sockets themselves, not only this process's descriptors."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=socket.dup(sock.fileno())) as dup,
            ):
                dup.shutdown(socket.SHUT_RD)
