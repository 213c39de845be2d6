"""BentoML's request timeout, fixed (clip_service/bentoml_fixes.py): its timer is cancelled
when the request is done, so the event loop keeps no request's context for the timeout."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import inspect
import weakref

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from clip_service.bentoml_fixes import cancel_timeout_timers

# BentoML 1.4.39's TimeoutMiddleware; another version needs the fix reviewed.
UPSTREAM_SHA256 = "4dab3e6bdd06efc590294d89beed9a399be6959b62bce9da024b33292e1be34b"


class Marker:
    """Set in a context variable before each request: alive while its context is."""


MARKER: contextvars.ContextVar[Marker] = contextvars.ContextVar("marker")
ALIVE: weakref.WeakSet[Marker] = weakref.WeakSet()


async def _answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow(scope, receive, send) -> None:
    await asyncio.sleep(10)


async def _requests(app, count: int) -> list[int]:
    statuses = []

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(count):
        marker = Marker()
        ALIVE.add(marker)
        MARKER.set(marker)
        del marker
        await app({"type": "http", "path": "/x"}, receive, send)
    return statuses


def test_bentoml_timeout_middleware_is_the_version_the_fix_copies():
    source = inspect.getsource(TimeoutMiddleware)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_SHA256, source


def test_finished_requests_leave_no_context_behind():
    cancel_timeout_timers()

    async def run() -> int:
        statuses = await _requests(TimeoutMiddleware(_answer, timeout=600), 50)
        assert statuses == [200] * 50
        await asyncio.sleep(0)  # the loop drops cancelled timers on its next turn
        gc.collect()
        return len(ALIVE)

    assert asyncio.run(run()) <= 1  # the last one is still set in this context


def test_a_request_past_the_timeout_is_still_a_504():
    cancel_timeout_timers()
    statuses = asyncio.run(_requests(TimeoutMiddleware(_slow, timeout=0.05), 1))
    assert statuses == [504]
