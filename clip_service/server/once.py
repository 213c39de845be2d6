"""An async value computed once, by its first caller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    """Await it for the value: concurrent callers share one computation, and a failed one
    (say, a model service that is not up yet) is retried by the next caller. The computation
    is shielded: a caller that is cancelled (its request timed out) does not cancel it."""

    def __init__(self, compute: Callable[[], Awaitable[T]]) -> None:
        self._compute = compute
        self._task: asyncio.Task[T] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self._task = asyncio.ensure_future(self._compute())
        return asyncio.shield(task).__await__()
