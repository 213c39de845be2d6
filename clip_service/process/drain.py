"""Graceful shutdown of the services that ``bentoml serve`` runs together.

On SIGTERM the circus arbiter sends SIGTERM to every worker at once, and uvicorn in each
stops serving. Requests in flight in the entry service then fail on their next call to a
model service that is already gone. :class:`Drain` changes that order (it takes over
uvicorn's handler, :mod:`.hooks`):

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
import logging
import time
from types import FrameType
from typing import Any, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from clip_service.process import hooks

logger = logging.getLogger(__name__)

Role = Literal["entry", "model"]
# Health checks and scrapes arrive every few seconds whatever the traffic: they are not work
# the drain waits for (a probe every 5 s would keep a model service from ever seeing quiet).
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


class Drain:
    """One service process's shutdown order on SIGTERM (see the module doc)."""

    def __init__(self, role: Role, quiet_s: float = 0, max_drain_s: float = 0) -> None:
        """``quiet_s`` and ``max_drain_s`` apply to the ``model`` role."""
        self.role, self.quiet_s, self.max_drain_s = role, quiet_s, max_drain_s
        self.in_flight = 0
        self.last_done = time.monotonic()
        self._tasks: set[asyncio.Task] = set()

    def install(self) -> None:
        """Take over uvicorn's SIGTERM handler (in the serving event loop)."""
        hooks.take_over_sigterm(self._on_sigterm)

    def _on_sigterm(self, server: Any, sig: int, frame: FrameType | None) -> None:
        if self._tasks:  # a second SIGTERM: stop draining now
            hooks.exit_server(server, sig, frame)
            return
        task = asyncio.ensure_future(self._drain(server, sig, frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, server: Any, sig: int, frame: FrameType | None) -> None:
        if self.role == "entry":
            hooks.stop_listening(server)
            logger.info("SIGTERM: refusing new connections, finishing the requests in flight")
        else:
            deadline = time.monotonic() + self.max_drain_s
            logger.info("SIGTERM: serving until idle for %.1f s", self.quiet_s)
            while time.monotonic() < deadline and (
                self.in_flight or time.monotonic() - self.last_done < self.quiet_s
            ):
                await asyncio.sleep(0.1)
        hooks.exit_server(server, sig, frame)


class GracefulShutdown:
    """A model service's drain: counts its requests in flight (not probes), so it serves on
    until idle."""

    def __init__(self, app: ASGIApp, quiet_s: float, max_drain_s: float) -> None:
        self.app = app
        self.drain = Drain("model", quiet_s, max_drain_s)
        self._installed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and not self._installed:
            self._installed = True  # uvicorn's handler is in place before the lifespan
            self.drain.install()
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
            self.drain.last_done = time.monotonic()
