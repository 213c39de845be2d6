"""What every route module shares: the guard, the limits that are part of the OpenAPI
document (read from the settings when the service is imported), and the entry."""

from __future__ import annotations

from typing import Annotated

import bentoml
from fastapi import Depends
from pydantic import Field

from clip_service.server.entry import Entry
from clip_service.server.guard import RouteGuard
from clip_service.settings import get_settings

_settings = get_settings()

# One guard for every route: its deadline, the in-flight limit, errors as answers.
guard = RouteGuard(_settings.request_timeout_s, _settings.max_concurrency)

MAX_FLAVORS = _settings.max_flavors
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
