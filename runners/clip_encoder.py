"""ClipEncoder: the CLIP model as a BentoML service, with interrogation beside it.

Requests from every caller go through the worker's scheduler (:mod:`clip_service.scheduling`):
batched across callers, interactive work first, bulk work in slices. Inputs arrive validated
and preprocessed by the entry service, so one request can never fail the others in its batch.
Interrogation's label tables are built here in the background from start-up, and prompts are
made here too: only image features go in and only prompts and scores come out.
"""

from __future__ import annotations

import bentoml
import numpy as np

from clip_service.engines.clip_engine import (
    Analysis,
    ChainProgress,
    ClipEngine,
    EngineLimits,
    Interrogation,
)
from clip_service.interrogation.custom_tables import (
    CustomTableLimits,
    CustomTableStatus,
    Ranking,
    check_table,
)
from clip_service.interrogation.requests import PromptRequest
from clip_service.interrogation.table_build import TablesStatus
from clip_service.interrogation.table_lists import DirectoryTableLists, TableLists
from clip_service.metrics import SchedulerMetrics
from clip_service.models.clip import ModelInfo
from clip_service.models.factory import load_configured_clip_model, pick_device
from clip_service.models.hub import fetch_clip_files
from clip_service.models.precision import plan
from clip_service.models.specs import parse_clip_spec
from clip_service.scheduling import Priority
from clip_service.settings import get_settings
from clip_service.state import redis_client
from clip_service.state.progress import RedisProgress
from clip_service.state.redis_tables import RedisTableLists
from runners.model_service import (
    answer_overload_with_429,
    exit_unless_loadable,
    guard,
    model_service_config,
)


# The service reads its settings (``get_settings()``, cached per process) when it starts
# (``__init__``), so a test that sets the environment and clears the cache first is served
# with them; BentoML's decorator takes only its worker count and time limits, at import.
@bentoml.service(**model_service_config("ClipEncoder", get_settings().encoder_workers))
class ClipEncoder:
    @bentoml.on_deployment
    def fetch_model() -> None:
        """Runs once in the serving process: download, or exit with one clear line."""
        settings = get_settings()
        exit_unless_loadable(lambda: fetch_clip_files(parse_clip_spec(settings.clip_model)))
        device = pick_device(settings.device)
        exit_unless_loadable(lambda: plan(device, settings.clip_precision, settings.image_runtime))

    def __init__(self) -> None:
        self.settings = settings = get_settings()
        self.custom_table_limits = CustomTableLimits.of(settings)
        limits = EngineLimits(
            image_max_batch=settings.image_max_batch_size,
            text_max_batch=settings.text_max_batch_size,
            slice_s=settings.bulk_slice_ms / 1000,
            max_wait_s=settings.max_latency_ms / 1000,
            max_interrogations=settings.max_interrogations,
            max_queued_interrogations=settings.max_queued_interrogations,
        )
        model = load_configured_clip_model(settings)
        self.engine = ClipEngine(model, limits, SchedulerMetrics("ClipEncoder"))

    @bentoml.on_startup
    def start_label_tables(self) -> None:
        """Custom label tables, and interrogation's, load, download or build from the start,
        at the lowest priority (interrogation's: not for a CLIP-only deployment). With a
        shared store (``REDIS_URL``), the custom tables' lists and the chains' progress are
        there, for every replica."""
        settings = self.settings
        lists: TableLists = DirectoryTableLists(settings.custom_tables_dir)
        if settings.redis_url:
            client = redis_client.connect(settings.redis_url)
            lists = RedisTableLists(client)
            self.engine.publish_progress = RedisProgress(client).report
        self.engine.start_custom_tables(lists, settings.label_cache_dir, self.custom_table_limits)
        if settings.interrogation:
            self.engine.build_label_tables(settings.label_cache_dir, settings.label_tables_download)

    @bentoml.api
    async def encode_images(
        self, pixels: np.ndarray, priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, d) raw image embeddings."""
        with answer_overload_with_429():
            return await self.engine.encode_images(pixels, priority)

    @bentoml.api
    async def encode_texts(
        self, texts: list[str], priority: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """Texts -> (n, d) raw text embeddings (truncated to the model's context)."""
        with answer_overload_with_429():
            return await self.engine.encode_texts(texts, priority)

    @bentoml.api
    async def search_prompt(
        self,
        image_features: np.ndarray,
        request: PromptRequest,
        wait_s: float = 0.0,
        progress_key: str | None = None,
        time_left_s: float | None = None,
    ) -> Interrogation:
        """clip-interrogator 0.6.0's prompt for raw image features; none if the label
        tables will not be ready within ``wait_s``. ``interrogation_progress`` tells how far
        it is by its ``progress_key``. 429 at once when it could not finish within
        ``time_left_s`` behind the interrogations already here."""
        with answer_overload_with_429():
            return await self.engine.search_prompt(
                image_features, request, wait_s, progress_key, time_left_s
            )

    @bentoml.api
    def interrogation_progress(self, key: str) -> ChainProgress | None:
        """The chain step of a running interrogation (none when this worker runs none under
        ``key``: not started, done, or on another worker)."""
        return self.engine.progress(key)

    @bentoml.api
    async def analyze(
        self, image_features: np.ndarray, top_k: int, wait_s: float = 0.0
    ) -> Analysis:
        """The top-k labels of each analysed table with their cosine to the image."""
        return await self.engine.analyze(image_features, top_k, wait_s)

    @bentoml.api
    def builtin_tables(self) -> TablesStatus | None:
        """How far the label tables are; null when this deployment does no interrogation."""
        return self.engine.tables_status()

    # The custom tables' APIs run on the event loop, where their embedding runs.
    @bentoml.api
    async def custom_tables(self) -> list[CustomTableStatus]:
        """The custom label tables and how far each is."""
        return await self.engine.custom_tables().statuses()

    @bentoml.api
    async def put_custom_table(self, name: str, labels: list[str]) -> CustomTableStatus | None:
        """Store a custom table (checked by the caller) and start embedding it; none when
        there are too many tables."""
        custom = self.engine.custom_tables()
        return await custom.put(check_table(name, labels, self.custom_table_limits))

    @bentoml.api
    async def delete_custom_table(self, name: str) -> bool:
        return await self.engine.custom_tables().delete(name)

    @bentoml.api
    async def rank_custom_tables(
        self, image_features: np.ndarray, names: list[str], top_k: int
    ) -> dict[str, Ranking]:
        """Each named custom table's top-k terms for raw image features."""
        return await self.engine.rank_custom_tables(image_features, names, top_k)

    @bentoml.api
    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.engine.model.count_tokens(texts)

    @bentoml.api
    def info(self) -> ModelInfo:
        return self.engine.info()


guard(ClipEncoder)
