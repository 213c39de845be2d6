"""From API items to embeddings: validate, fetch, decode and preprocess, then encode.

This is the entry service's side of the encoder: all per-item work (and every way an item
can be bad) happens here, before anything joins a batch, and each request makes at most
one call per modality to the batched ``ClipEncoder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Protocol

import anyio.to_thread
import numpy as np

from clip_service.concurrency import gather_or_cancel
from clip_service.inputs.images import declared_pixels, decode_base64, decode_image
from clip_service.inputs.pixel_budget import PixelBudget
from clip_service.inputs.url_fetch import fetch_image_url
from clip_service.models.clip import ModelInfo
from clip_service.models.preprocess import Preprocessor, input_size
from clip_service.scheduling import Priority
from clip_service.server.remote import RemoteModel
from clip_service.server.schemas import ImageItem, Item
from clip_service.settings import Settings


class EncoderClient(Protocol):
    """The async API of the ``ClipEncoder`` service (``depends(...).to_async``) used here."""

    async def encode_images(self, pixels: np.ndarray, priority: Priority = ...) -> np.ndarray: ...
    async def encode_texts(self, texts: list[str], priority: Priority = ...) -> np.ndarray: ...
    async def count_tokens(self, texts: list[str]) -> list[int]: ...
    async def info(self) -> ModelInfo: ...


class ItemEncoder:
    def __init__(self, encoder: EncoderClient, settings: Settings) -> None:
        self.encoder, self.settings = encoder, settings
        self.url_policy = settings.url_policy
        # Decoded pixels held at once in this process (inputs/pixel_budget.py).
        self.budget = PixelBudget(settings.decode_pixels)
        # A dependency client's methods appear only once it has connected: look up late.
        self.model = RemoteModel(lambda: self.encoder.info())

    async def model_info(self) -> ModelInfo:
        return await self.model.info()

    async def image_bytes(self, item: Item | ImageItem, field: str) -> tuple[bytes, str]:
        """An image item's bytes (base64 decoded, or fetched from its URL) and the field
        to name in its errors."""
        if item.img_blob is not None:
            return decode_base64(item.img_blob, f"{field}.img_blob"), f"{field}.img_blob"
        assert item.img_uri is not None
        data = await fetch_image_url(item.img_uri, f"{field}.img_uri", self.url_policy)
        return data, f"{field}.img_uri"

    async def pixels(self, data: bytes, field: str) -> np.ndarray:
        """Image bytes -> the CLIP model's input pixels (its own preprocessing)."""
        _, preprocess = await self.model.get()
        (pixels,) = await self.preprocessed(data, field, [preprocess])
        return pixels

    async def preprocessed(
        self, data: bytes, field: str, preprocessors: Sequence[Preprocessor]
    ) -> list[np.ndarray]:
        """Image bytes -> each preprocessor's input pixels, decoded off the event loop
        (Pillow releases the GIL) within this process's pixel budget; the decoded image is
        dropped as soon as its pixels exist. Errors name ``field``.

        With JPEG_DRAFT, JPEGs decode at reduced scale down to 2x the CLIP input size.
        """
        max_pixels = self.settings.max_image_pixels
        draft_to = None
        if self.settings.jpeg_draft:
            draft_to = 2 * input_size((await self.model_info()).preprocess)

        def decode_and_preprocess() -> list[np.ndarray]:
            image = decode_image(data, field, max_pixels=max_pixels, draft_to=draft_to)
            return [preprocess(image) for preprocess in preprocessors]

        declared = declared_pixels(data)
        # One refused from its header (nothing decoded) takes no budget: it never waits
        # behind, or holds up, the decodes in progress.
        held = self.budget.hold(declared) if declared <= max_pixels else nullcontext()
        async with held:
            return await anyio.to_thread.run_sync(decode_and_preprocess)

    async def item_pixels(self, item: Item, field: str) -> np.ndarray:
        return await self.pixels(*await self.image_bytes(item, field))

    async def encode_image(
        self, data: bytes, field: str, priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """One image's bytes -> its raw embedding."""
        return (await self.encode_pixels([await self.pixels(data, field)], priority))[0]

    async def encode_pixels(
        self, pixels: Sequence[np.ndarray], priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        return await self.encoder.encode_images(pixels=np.stack(pixels), priority=priority)

    async def encode_items(self, items: Sequence[Item], field: str) -> np.ndarray:
        """Embeddings in input order; texts and images go out as one call each, concurrently.
        One bad item stops the work on the others."""
        text_at = [i for i, item in enumerate(items) if item.text is not None]
        image_at = [i for i, item in enumerate(items) if item.text is None]
        pixels = await gather_or_cancel(
            *(self.item_pixels(items[i], f"{field}[{i}]") for i in image_at)
        )
        calls = []
        if text_at:
            calls.append(self.encoder.encode_texts([items[i].text for i in text_at]))
        if image_at:
            calls.append(self.encode_pixels(pixels))
        results = await gather_or_cancel(*calls)
        info = await self.model_info()
        out = np.empty((len(items), info.embedding_size), dtype=np.float32)
        for positions, vectors in zip([p for p in (text_at, image_at) if p], results, strict=True):
            out[positions] = vectors
        return out
