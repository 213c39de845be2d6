"""The deadline of the work being done: a request's (``REQUEST_TIMEOUT_S``, set by the route
guard) or a job's (``JOB_TIMEOUT_S``), so that work deep in a request can tell how long it
has, and admission can refuse what could not finish in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


@asynccontextmanager
async def within(seconds: float) -> AsyncIterator[None]:
    """The code inside has ``seconds`` from now: it is cancelled then (``TimeoutError``),
    and :func:`time_left_s` tells it how long it has meanwhile."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        async with asyncio.timeout(seconds):
            yield
    finally:
        _deadline.reset(token)


def time_left_s() -> float | None:
    """Seconds left before the current deadline (None outside one)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
