"""Running awaitables together so that one failure stops the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def gather_or_cancel(*awaitables: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather``, except that the first failure cancels the others (gather lets
    them run on: a request refused for one bad item went on decoding and encoding the rest)
    and is raised as it is, not in an exception group."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(a)) for a in awaitables]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
