"""The entry service's interrogation: image -> CLIP features and BLIP caption -> prompt.

The algorithm (:mod:`.interrogator`) runs here, next to the HTTP layer; every model call
goes to the batched model services, so interrogations from all callers share batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..captioning import CaptionerInfo
from ..encoding import EncoderClient, ItemEncoder
from ..metrics import timed_interrogation
from ..once import Once
from ..remote import RemoteModel
from .interrogator import Interrogator, Mode
from .label_cache import LabelCache
from .labels import read_label_tables

logger = logging.getLogger(__name__)


class CaptionerClient(Protocol):
    """The async API of the ``BlipCaptioner`` service."""

    async def caption(self, pixels: np.ndarray) -> list[str]: ...
    async def info(self) -> CaptionerInfo: ...


class EncoderTextTower:
    """The interrogator's ``TextEncoder``, served by the ``ClipEncoder`` service."""

    def __init__(self, client: EncoderClient, context_length: int) -> None:
        self.client, self.context_length = client, context_length

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self.client.encode_texts(list(texts))

    async def encode_texts_sharing_prefix(self, texts: Sequence[str]) -> np.ndarray:
        return await self.client.encode_texts_sharing_prefix(list(texts))

    async def encode_texts_full_context(self, texts: Sequence[str]) -> np.ndarray:
        """Label tables: the library's exact float16 values (see ClipModel.encode_texts)."""
        return await self.client.encode_texts_full_context(list(texts))

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.client.count_tokens(list(texts))


class InterrogationPipeline:
    def __init__(
        self,
        items: ItemEncoder,
        captioner: CaptionerClient,
        label_cache_dir: Path,
        exact_label_tables: bool = True,
    ) -> None:
        self.items, self.captioner_client = items, captioner
        self.captioner = RemoteModel(lambda: self.captioner_client.info())
        self.label_cache_dir, self.exact_label_tables = label_cache_dir, exact_label_tables
        # The label tables are loaded or built once, by the first request that needs them.
        self.interrogator = Once(self._load_interrogator)

    async def _load_interrogator(self) -> Interrogator:
        info = await self.items.model_info()
        tower = EncoderTextTower(self.items.encoder, info.context_length)
        encode = tower.encode_texts_full_context if self.exact_label_tables else tower.encode_texts
        cache = LabelCache(self.label_cache_dir, info.spec, encode)
        tables = await cache.embed_all(read_label_tables())
        return Interrogator(tower, tables)

    async def warm(self, attempts: int = 30, pause_s: float = 2.0) -> None:
        """Load or build the label tables ahead of the first request, once the encoder is up.

        Started when the entry service starts; a request that comes before it is done waits
        for the same build rather than starting another.
        """
        for attempt in range(attempts):
            try:
                await self.interrogator
                return
            except Exception as exc:  # the encoder is not up yet; requests will retry too
                if attempt == attempts - 1:
                    logger.warning("label tables not built at start-up: %s", exc)
                await asyncio.sleep(pause_s)

    async def caption(self, image: Image.Image) -> str:
        _, preprocess = await self.captioner.get()
        pixels = await asyncio.to_thread(preprocess, image)
        return (await self.captioner_client.caption(pixels[None]))[0]

    @timed_interrogation
    async def interrogate(
        self,
        image: Image.Image,
        mode: Mode,
        caption: str | None,
        min_flavors: int,
        max_flavors: int | None,
    ) -> tuple[str, str]:
        """(prompt, caption used: "" in negative mode, which uses none). The caption is
        generated while CLIP encodes the image, unless given or not needed."""
        needs_caption = mode is not Mode.NEGATIVE and not caption
        jobs = [self.items.encode_image(image), self.interrogator]
        if needs_caption:
            jobs.append(self.caption(image))
        features, interrogator, *generated = await asyncio.gather(*jobs)
        if generated:
            caption = generated[0]
        prompt = await interrogator.interrogate(
            features, mode, caption=caption, min_flavors=min_flavors, max_flavors=max_flavors
        )
        return prompt, caption if mode is not Mode.NEGATIVE else ""

    async def analyze(self, image: Image.Image, top_k: int) -> dict[str, list[tuple[str, float]]]:
        features, interrogator = await asyncio.gather(
            self.items.encode_image(image), self.interrogator
        )
        return await interrogator.analyze(features, top_k)
