"""The entry service's request deadline (504) and in-flight limit (429), in the project's shape.

BentoML has both (``traffic.timeout`` and ``traffic.max_concurrency``), but its
``TimeoutMiddleware`` and ``MaxConcurrencyMiddleware`` wrap the app outside every
middleware added with ``add_asgi_middleware`` (``ServiceAppFactory.middlewares`` in
``_bentoml_impl/server/app.py``): their 504 and 429 never pass through the CORS
middleware or the error shape, and carry no ``Retry-After``. :class:`Traffic` does the same
two jobs inside them. BentoML's own timeout stays configured a few seconds longer, as a
backstop that this one always beats.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .middleware import send_json
from .upstream import RETRY_AFTER_S

# Probes and scrapes are never refused for load (as BentoML's limiter does).
UNLIMITED_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
RETRY_AFTER = [(b"retry-after", b"%d" % RETRY_AFTER_S)]


class Traffic:
    """ASGI middleware: at most ``max_concurrency`` requests in flight (0: no limit), each
    answered within ``timeout_s`` or cancelled and answered 504."""

    def __init__(self, app: ASGIApp, timeout_s: float, max_concurrency: int) -> None:
        self.app, self.timeout_s, self.max_concurrency = app, timeout_s, max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.max_concurrency or scope["path"] in UNLIMITED_PATHS:
            await self._within_deadline(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            message = (
                f"too many requests: {self.max_concurrency} already in flight; "
                f"retry after {RETRY_AFTER_S} s"
            )
            await send_json(send, 429, error_body(message), RETRY_AFTER)
            return
        self.in_flight += 1
        try:
            await self._within_deadline(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _within_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request; past the deadline with no answer started, cancel it and answer
        504. An answer already under way is left to finish, as BentoML does."""
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, watching_send))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done or started:
            await task
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not started:  # the app may still have answered while it was being cancelled
            message = f"timeout: no answer within {self.timeout_s:g} s"
            await send_json(send, 504, error_body(message), RETRY_AFTER)
