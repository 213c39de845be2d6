"""The deadline of the work being done: a request's (``REQUEST_TIMEOUT_S``, set by the route
guard) or a job's (``JOB_TIMEOUT_S``), so that work deep in a request can tell how long it
has, and admission can refuse what could not finish in time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """The code inside has ``seconds`` from now (the caller enforces it, e.g. with
    ``asyncio.timeout``)."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left_s() -> float | None:
    """Seconds left before the current deadline (None outside one)."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
