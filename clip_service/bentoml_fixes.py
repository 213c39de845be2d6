"""A fix for BentoML 1.4.39's request timeout, applied in every service process.

``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``, added for
``traffic.timeout``) schedules ``loop.call_later(timeout, ...)`` for each request and never
cancels it. The timer handle keeps a copy of the request's context (its OpenTelemetry span
and everything set in it) referenced by the event loop for the whole timeout: 600 s
(``REQUEST_TIMEOUT_S``) in the entry service. Measured under the hostile soak: the entry
service's RSS grew 820 MiB in 150 s at 120 requests/s, about 10 KB per request, until the
first timers expire. :func:`cancel_timeout_timers` replaces ``__call__`` with the same logic
that cancels its timer when the request is done; tests/test_bentoml_fixes.py fails if
BentoML's version changes.
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send


async def _call(self: TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    """BentoML 1.4.39's ``TimeoutMiddleware.__call__``, its timer cancelled at the end."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            body = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(body, status_code=504)(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def cancel_timeout_timers() -> None:
    TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
