"""What every route module shares: the guard, the entry, and the limits that are part of
the OpenAPI document (so read from the settings when the routes are declared)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec

import bentoml
from fastapi import Depends
from pydantic import Field

from clip_service.server.entry import Entry
from clip_service.settings import get_settings

P = ParamSpec("P")

MAX_FLAVORS = get_settings().max_flavors
MAX_LABELS = 1000
MAX_EXTRA_TABLES = 8
ExtraTables = Annotated[
    list[str],
    Field(max_length=MAX_EXTRA_TABLES, description="custom label tables to rank the image in"),
]


async def current_entry() -> Entry:
    """The serving ``ClipApi``'s parts (a FastAPI dependency: ``Depends(current_entry)``).
    Async, so FastAPI calls it on the event loop, not in the thread pool image decodes use."""
    return bentoml.get_current_service().entry


EntryDep = Annotated[Entry, Depends(current_entry)]


def guard(route: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Any]]:
    """Run ``route`` under the serving entry's guard (``Entry.guard``: the deadline, the
    in-flight limit and errors as answers, from the entry's settings)."""

    @functools.wraps(route)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
        return await (await current_entry()).guard.run(route, *args, **kwargs)

    return guarded
