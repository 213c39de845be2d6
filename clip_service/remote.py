"""A model service's self-description, fetched once, and the preprocessor built from it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from .preprocess import PreprocessConfig, Preprocessor, build_preprocessor


class DescribesPreprocessing(Protocol):
    preprocess: PreprocessConfig


InfoT = TypeVar("InfoT", bound=DescribesPreprocessing)


class RemoteModel(Generic[InfoT]):
    """The model service owns the model; callers learn its preprocessing from it.

    The first caller fetches the info; concurrent callers wait for that same fetch, and a
    failed fetch (the service is not up yet) is retried by the next caller.
    """

    def __init__(self, fetch_info: Callable[[], Awaitable[InfoT]]) -> None:
        self._fetch_info = fetch_info
        self._lock = asyncio.Lock()
        self._loaded: tuple[InfoT, Preprocessor] | None = None

    async def get(self) -> tuple[InfoT, Preprocessor]:
        if self._loaded is None:
            async with self._lock:
                if self._loaded is None:
                    info = await self._fetch_info()
                    self._loaded = (info, build_preprocessor(info.preprocess))
        return self._loaded

    async def info(self) -> InfoT:
        return (await self.get())[0]
