"""A model service's self-description, fetched once, and the preprocessor built from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from clip_service.models.preprocess import PreprocessConfig, Preprocessor, build_preprocessor
from clip_service.server.once import Once


class DescribesPreprocessing(Protocol):
    preprocess: PreprocessConfig


InfoT = TypeVar("InfoT", bound=DescribesPreprocessing)


class RemoteModel(Generic[InfoT]):
    """The model service owns the model; callers learn its preprocessing from it.

    Fetched once (:class:`Once`): a fetch that fails because the service is not up yet is
    retried by the next caller.
    """

    def __init__(self, fetch_info: Callable[[], Awaitable[InfoT]]) -> None:
        async def load() -> tuple[InfoT, Preprocessor]:
            info = await fetch_info()
            return info, build_preprocessor(info.preprocess)

        self._loaded = Once(load)

    async def get(self) -> tuple[InfoT, Preprocessor]:
        return await self._loaded

    async def info(self) -> InfoT:
        return (await self.get())[0]
