"""The entry service's side of interrogation: an image in, a prompt (or top labels) out.

The entry decodes the image, asks the captioner for its caption and the encoder for its
features (at interrogation priority, concurrently), then hands both to the encoder, where
the label tables and the algorithm live. While the tables are still being made, a request
waits for them only if they should be ready within half its time budget; otherwise it is
answered 503 at once, with the build's progress and when to retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from clip_service.engines.clip_engine import Analysis, ChainProgress, Interrogation
from clip_service.errors import Unavailable
from clip_service.interrogation.custom_tables import RankedTerm
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.table_build import TablesStatus
from clip_service.metrics import timed_interrogation
from clip_service.models.captioning import CaptionerInfo
from clip_service.scheduling import Priority
from clip_service.server.encoding import ItemEncoder
from clip_service.server.label_lists import LabelLists
from clip_service.server.remote import RemoteModel

# Terms of each custom label table given beside a prompt.
EXTRA_TABLE_TOP_K = 5
CustomRankings = dict[str, list[RankedTerm]]


class Interrogated(NamedTuple):
    prompt: str
    caption: str  # the caption used: "" in negative mode
    label_tables: CustomRankings | None  # the custom tables asked for


# Retry-After bounds while the tables are being made: soon enough to see progress, not so
# soon that clients poll a build that has hours to go.
MIN_RETRY_S, MAX_RETRY_S = 5, 300


class CaptionerClient(Protocol):
    """The async API of the ``BlipCaptioner`` service."""

    async def caption(self, pixels: np.ndarray, priority: Priority = ...) -> list[str]: ...
    async def info(self) -> CaptionerInfo: ...


class InterrogatingEncoder(Protocol):
    """The interrogation API of the ``ClipEncoder`` service (keyword arguments)."""

    async def label_tables(self) -> TablesStatus: ...
    async def interrogate(self, **kwargs: Any) -> Interrogation: ...
    async def analyze(self, **kwargs: Any) -> Analysis: ...
    async def interrogation_progress(self, key: str) -> ChainProgress | None: ...


class InterrogationPipeline:
    def __init__(
        self,
        items: ItemEncoder,
        encoder: InterrogatingEncoder,
        captioner: CaptionerClient,
        label_lists: LabelLists,
        request_timeout_s: float,
    ) -> None:
        self.items, self.encoder, self.captioner_client = items, encoder, captioner
        self.label_lists = label_lists
        self.captioner = RemoteModel(lambda: self.captioner_client.info())
        # Label tables still being made are waited for only within half a request's budget.
        self.max_wait_s = request_timeout_s / 2

    async def caption(self, image: Image.Image, priority: Priority = Priority.INTERACTIVE) -> str:
        _, preprocess = await self.captioner.get()
        pixels = await asyncio.to_thread(preprocess, image)
        return (await self.captioner_client.caption(pixels=pixels[None], priority=priority))[0]

    async def tables(self) -> TablesStatus:
        return await self.encoder.label_tables()

    @timed_interrogation
    async def interrogate(
        self,
        image: Image.Image,
        mode: Mode,
        caption: str | None,
        min_flavors: int,
        max_flavors: int | None,
        progress_key: str | None = None,
        label_tables: Sequence[str] = (),
    ) -> Interrogated:
        """The prompt, the caption used ("" in negative mode, which uses none) and the top
        terms of the custom ``label_tables`` asked for. The caption is generated while CLIP
        encodes the image, unless given or not needed; with a ``progress_key``,
        :meth:`chain_step` tells how far it is meanwhile."""
        started = time.monotonic()
        await self._refuse_unless_tables_due()
        jobs: list[Any] = [self.items.encode_image(image, Priority.INTERROGATION)]
        if mode is not Mode.NEGATIVE and not caption:
            jobs.append(self.caption(image, Priority.INTERROGATION))
        features, *generated = await asyncio.gather(*jobs)
        if generated:
            caption = generated[0]
        answer, extra = await asyncio.gather(
            self.encoder.interrogate(
                image_features=features,
                mode=mode,
                caption=caption,
                min_flavors=min_flavors,
                max_flavors=max_flavors,
                wait_s=self._wait_left(started),
                progress_key=progress_key,
            ),
            self._custom(features, label_tables, EXTRA_TABLE_TOP_K),
        )
        if answer.prompt is None:
            raise tables_unavailable(answer.tables)
        used = "" if mode is Mode.NEGATIVE else caption or ""
        return Interrogated(answer.prompt, used, extra)

    async def chain_step(self, key: str) -> tuple[int, int] | None:
        """(step, at most this many steps) of the interrogation running under ``key``."""
        progress = await self.encoder.interrogation_progress(key=key)
        return None if progress is None else (progress.step, progress.steps)

    async def analyze(
        self, image: Image.Image, top_k: int, label_tables: Sequence[str] = ()
    ) -> tuple[dict[str, list[tuple[str, float]]], CustomRankings | None]:
        """The top-k labels of each built-in table, and of the custom ``label_tables``."""
        started = time.monotonic()
        await self._refuse_unless_tables_due()
        features = await self.items.encode_image(image, Priority.INTERROGATION)
        answer, extra = await asyncio.gather(
            self.encoder.analyze(
                image_features=features, top_k=top_k, wait_s=self._wait_left(started)
            ),
            self._custom(features, label_tables, top_k),
        )
        if answer.labels is None:
            raise tables_unavailable(answer.tables)
        return answer.labels, extra

    async def _custom(
        self, features: np.ndarray, names: Sequence[str], top_k: int
    ) -> CustomRankings | None:
        """The image's top terms in each named custom table; None when none are asked."""
        if not names:
            return None
        return await self.label_lists.rank(features, names, top_k, "label_tables")

    async def _refuse_unless_tables_due(self) -> None:
        """503 before any model work when the tables will not be ready in time."""
        status = await self.tables()
        if not status.due_within(self.max_wait_s):
            raise tables_unavailable(status)

    def _wait_left(self, started: float) -> float:
        return max(0.0, self.max_wait_s - (time.monotonic() - started))


def tables_unavailable(status: TablesStatus) -> Unavailable:
    """503: the label tables are not ready; the message says how far they are."""
    if status.state == "failed":
        message = f"label tables: the build failed ({status.error}) and is being retried"
        return Unavailable(message, MAX_RETRY_S // 10)
    eta = status.eta_s if status.eta_s is not None else MAX_RETRY_S // 10
    message = (
        f"label tables are being made for this CLIP model (first start): {status.progress}. "
        "Interrogation starts when they are ready; CLIP routes work meanwhile. Build them "
        "ahead of time with `clip-service warm-cache`."
    )
    return Unavailable(message, int(min(max(eta, MIN_RETRY_S), MAX_RETRY_S)))
