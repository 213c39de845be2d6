"""From API items to embeddings: validate, fetch, decode and preprocess, then encode.

This is the entry service's side of the encoder: all per-item work (and every way an item
can be bad) happens here, before anything joins a batch, and each request makes at most
one call per modality to the batched ``ClipEncoder``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import anyio.to_thread
import numpy as np

from .clip_model import ModelInfo
from .images import decode_base64, decode_image, fetch_url
from .preprocess import Preprocessor, build_preprocessor
from .schemas import Item
from .settings import Settings


class EncoderClient(Protocol):
    """The async API of the ``ClipEncoder`` service (``depends(...).to_async``)."""

    async def encode_images(self, pixels: np.ndarray) -> np.ndarray: ...
    async def encode_texts(self, texts: list[str]) -> np.ndarray: ...
    async def info(self) -> ModelInfo: ...


class ItemEncoder:
    def __init__(self, encoder: EncoderClient, settings: Settings) -> None:
        self.encoder, self.settings = encoder, settings
        self._info: ModelInfo | None = None
        self._preprocess: Preprocessor | None = None
        self._lock = asyncio.Lock()

    async def model_info(self) -> ModelInfo:
        """The encoder's model description, fetched once (the encoder owns the model)."""
        if self._info is None:
            async with self._lock:
                if self._info is None:
                    info = await self.encoder.info()
                    self._preprocess = build_preprocessor(info.preprocess)
                    self._info = info
        return self._info

    async def pixels_from_bytes(self, data: bytes, field: str) -> np.ndarray:
        """Decode and preprocess off the event loop (Pillow releases the GIL)."""
        await self.model_info()
        return await anyio.to_thread.run_sync(self._decode_and_preprocess, data, field)

    def _decode_and_preprocess(self, data: bytes, field: str) -> np.ndarray:
        image = decode_image(data, field, max_pixels=self.settings.max_image_pixels)
        assert self._preprocess is not None
        return self._preprocess(image)

    async def item_pixels(self, item: Item, field: str) -> np.ndarray:
        if item.img_blob is not None:
            data = decode_base64(item.img_blob, f"{field}.img_blob")
            return await self.pixels_from_bytes(data, f"{field}.img_blob")
        assert item.img_uri is not None
        data = await fetch_url(
            item.img_uri,
            f"{field}.img_uri",
            timeout_s=self.settings.url_timeout_s,
            max_bytes=self.settings.url_max_bytes,
        )
        return await self.pixels_from_bytes(data, f"{field}.img_uri")

    async def encode_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        return await self.encoder.encode_images(np.stack(pixels))

    async def encode_items(self, items: Sequence[Item], field: str) -> np.ndarray:
        """Embeddings in input order; texts and images go out as one call each, concurrently."""
        text_at = [i for i, item in enumerate(items) if item.text is not None]
        image_at = [i for i, item in enumerate(items) if item.text is None]
        pixels = await asyncio.gather(
            *(self.item_pixels(items[i], f"{field}[{i}]") for i in image_at)
        )
        calls = []
        if text_at:
            calls.append(self.encoder.encode_texts([items[i].text for i in text_at]))
        if image_at:
            calls.append(self.encode_pixels(pixels))
        results = await asyncio.gather(*calls)
        info = await self.model_info()
        out = np.empty((len(items), info.embedding_size), dtype=np.float32)
        for positions, vectors in zip([p for p in (text_at, image_at) if p], results, strict=True):
            out[positions] = vectors
        return out
