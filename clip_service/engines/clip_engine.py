"""The CLIP model as one model worker serves it: scheduled, with interrogation beside it.

Interrogation runs here, next to the text tower, rather than in the entry service: the label
tables (230-460 MB) are held once per model worker, on the model's device, and a best-mode
prompt's ~200 text-tower calls never leave the process. Only features go in, and only the
prompt or the top labels come out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from clip_service.interrogation.custom_tables import CustomTableLimits, CustomTables, Ranking
from clip_service.interrogation.hub_tables import published_tables
from clip_service.interrogation.interrogator import (
    Interrogator,
    StepReport,
)
from clip_service.interrogation.label_cache import LabelCache, LabelTables
from clip_service.interrogation.labels import read_label_tables
from clip_service.interrogation.requests import PromptRequest
from clip_service.interrogation.table_build import TableBuild, TablesStatus
from clip_service.interrogation.table_lists import TableLists
from clip_service.models.clip import ClipModel, ModelInfo
from clip_service.scheduling import Admission, Method, Priority, Scheduler, SchedulerObserver

# A chain step's prompts share one prefix and run as one job, sliced by time: no other
# bound is needed (the prefix path bounds its activations itself).
PREFIXED_MAX_BATCH = 4096


class Interrogation(BaseModel):
    """A prompt, or none yet: the label tables are still being made (``tables`` says how far)."""

    prompt: str | None
    tables: TablesStatus


class ChainProgress(BaseModel):
    """How far a running interrogation's chain is: step ``step`` of at most ``steps``."""

    step: int
    steps: int


class Analysis(BaseModel):
    """Top labels per table with their cosines, or none yet (see :class:`Interrogation`)."""

    labels: dict[str, list[tuple[str, float]]] | None
    tables: TablesStatus


@dataclass(frozen=True)
class EngineLimits:
    """How the scheduler batches and slices, and how many interrogations run at once and
    wait (docs/configuration.md, "Batching" and "Admission")."""

    image_max_batch: int
    text_max_batch: int
    slice_s: float
    max_wait_s: float
    max_interrogations: int = 2
    max_queued_interrogations: int = 16


class ClipEngine:
    """One worker's CLIP model behind its scheduler; label tables built when interrogating."""

    def __init__(
        self,
        model: ClipModel,
        limits: EngineLimits,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self.model = model
        self.scheduler = Scheduler(
            [
                Method("encode_images", model.encode_images, limits.image_max_batch),
                Method("encode_texts", model.encode_texts, limits.text_max_batch),
                Method("encode_prefixed", model.encode_prefixed, PREFIXED_MAX_BATCH, merge=False),
            ],
            slice_s=limits.slice_s,
            max_wait_s=limits.max_wait_s,
            observer=observer,
            thread_name="clip",
        )
        self.admission = Admission(limits.max_interrogations, limits.max_queued_interrogations)
        self.tables: TableBuild | None = None
        self._interrogator: Interrogator | None = None
        self._progress: dict[str, ChainProgress] = {}
        # Where else a chain's steps go: the shared store, for entry replicas on other hosts.
        self.publish_progress: Callable[[str, int, int], None] | None = None
        self.custom: CustomTables | None = None

    async def encode_images(
        self, pixels: np.ndarray, priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, d) raw image embeddings."""
        return await self.scheduler.run("encode_images", pixels, priority)

    async def encode_texts(
        self, texts: Sequence[str], priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """Texts -> (n, d) raw text embeddings (truncated to the model's context)."""
        return await self.scheduler.run("encode_texts", list(texts), priority)

    def info(self) -> ModelInfo:
        return self.model.info()

    def start_custom_tables(
        self, lists: TableLists, cache_dir: Path, limits: CustomTableLimits
    ) -> None:
        """Take up the stored custom label tables (embedded in the background)."""

        async def encode(texts: Sequence[str]) -> np.ndarray:
            return await self.encode_texts(texts, Priority.BACKGROUND)

        cache = LabelCache(cache_dir, self.model.spec.raw, encode, progress=False)
        self.custom = CustomTables(lists, cache, limits)
        self.custom.start()

    def custom_tables(self) -> CustomTables:
        if self.custom is None:
            raise RuntimeError("custom label tables were not started")
        return self.custom

    async def rank_custom_tables(
        self, image_features: np.ndarray, names: Sequence[str], top_k: int
    ) -> dict[str, Ranking]:
        scoring = self.model.scoring
        custom = self.custom_tables()
        return {name: await custom.ranked(image_features, name, top_k, scoring) for name in names}

    def build_label_tables(self, cache_dir: Path, download: bool) -> None:
        """Start making the interrogation label tables in the background (once).

        ``download``: fetch the tables clip-interrogator publishes for this model, if any,
        before encoding them here.
        """
        if self.tables is not None:
            return
        spec = self.model.spec.raw

        async def encode(texts: Sequence[str]) -> np.ndarray:
            return await self.encode_texts(texts, Priority.BACKGROUND)

        fetch = published_tables(spec) if download else None
        cache = LabelCache(cache_dir, spec, encode, fetch=fetch)
        self.tables = TableBuild(cache, read_label_tables())
        self.tables.start()

    def tables_status(self) -> TablesStatus | None:
        """None when this worker does no interrogation."""
        return self.tables.status() if self.tables is not None else None

    async def search_prompt(
        self,
        image_features: np.ndarray,
        request: PromptRequest,
        wait_s: float,
        progress_key: str | None = None,
        time_left_s: float | None = None,
    ) -> Interrogation:
        """The prompt, or none when the label tables will not be ready within ``wait_s``.
        With a ``progress_key``, :meth:`progress` tells how far its chain is meanwhile.

        Admitted first (:class:`~clip_service.scheduling.Admission`): refused with
        :class:`~clip_service.scheduling.Overloaded` when it could not finish within
        ``time_left_s`` behind the interrogations already here.
        """
        tables = self._tables()
        interrogator = await self._ready(tables, wait_s)
        prompt = None
        if interrogator is not None:
            async with self.admission.admitted(request.mode.value, request.cost, time_left_s):
                try:
                    prompt = await interrogator.interrogate(
                        image_features,
                        request.mode,
                        caption=request.caption,
                        min_flavors=request.min_flavors,
                        max_flavors=request.max_flavors,
                        on_step=self._reporter(progress_key),
                    )
                finally:
                    self._progress.pop(progress_key or "", None)
        return Interrogation(prompt=prompt, tables=tables.status())

    def progress(self, key: str) -> ChainProgress | None:
        """The chain step of the interrogation running under ``key`` in this worker."""
        return self._progress.get(key)

    def _reporter(self, key: str | None) -> StepReport | None:
        if key is None:
            return None

        def report(step: int, steps: int) -> None:
            self._progress[key] = ChainProgress(step=step, steps=steps)
            if self.publish_progress is not None:
                self.publish_progress(key, step, steps)

        return report

    async def analyze(self, image_features: np.ndarray, top_k: int, wait_s: float) -> Analysis:
        """Top-k labels per table, or none when the tables will not be ready within ``wait_s``."""
        tables = self._tables()
        interrogator = await self._ready(tables, wait_s)
        labels = None if interrogator is None else await interrogator.analyze(image_features, top_k)
        return Analysis(labels=labels, tables=tables.status())

    def _tables(self) -> TableBuild:
        if self.tables is None:
            raise RuntimeError("this worker does no interrogation (CAPTION_MODEL=none)")
        return self.tables

    async def _ready(self, build: TableBuild, wait_s: float) -> Interrogator | None:
        """The interrogator, waiting for the tables only if they should be done in time."""
        tables = build.ready
        if tables is None:
            if not build.status().due_within(wait_s):
                return None
            tables = await build.wait(wait_s)
            if tables is None:
                return None
        if self._interrogator is None:
            self._interrogator = self._make_interrogator(tables)
        return self._interrogator

    def _make_interrogator(self, tables: LabelTables) -> Interrogator:
        return Interrogator(_ScheduledTextTower(self), tables, device=self.model.device)


class _ScheduledTextTower:
    """The interrogator's text encoder: this worker's model at interrogation priority."""

    def __init__(self, engine: ClipEngine) -> None:
        self.engine = engine
        self.context_length = engine.model.context_length

    async def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self.engine.encode_texts(texts, Priority.INTERROGATION)

    async def encode_texts_sharing_prefix(self, texts: Sequence[str]) -> np.ndarray:
        """The step's prompts tokenized once (off the event loop), then run in slices that
        all share the step's prefix, computed once (the model caches its keys and values)."""
        rows = await asyncio.to_thread(self.engine.model.prefixed, list(texts))
        if rows is None:
            return await self.encode_texts(texts)
        return await self.engine.scheduler.run("encode_prefixed", rows, Priority.INTERROGATION)

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Outside the model's queue (tokenizing a few prompts is quick), but off the event
        loop: the tokenizer's lock may be held by a step's tokenization in another thread."""
        return await asyncio.to_thread(self.engine.model.count_tokens, list(texts))
