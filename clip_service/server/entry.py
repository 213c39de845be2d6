"""The entry's parts, made once from the settings and the model-service clients, and handed
to every route (:mod:`clip_service.server.routes`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clip_service.errors import NotServed
from clip_service.interrogation.custom_tables import CustomTableLimits
from clip_service.scheduling import Admission
from clip_service.server.classify import Classifier
from clip_service.server.coalescing import CoalescingEncoder
from clip_service.server.custom_tables import CustomTablesEncoder, RemoteCustomTables
from clip_service.server.encoding import EncoderClient, ItemEncoder
from clip_service.server.guard import RouteGuard
from clip_service.server.interrogation import (
    CaptionerClient,
    InterrogatingEncoder,
    InterrogationPipeline,
)
from clip_service.server.jobs import JobRegistry, ProgressSource
from clip_service.server.openai_embeddings import OpenAIEmbeddings
from clip_service.server.upstream import dependencies_ready
from clip_service.server.weaviate import WeaviateVectorizer
from clip_service.settings import Settings
from clip_service.state.job_store import JobStore
from clip_service.state.stores import job_state


class ClipEncoderClient(EncoderClient, InterrogatingEncoder, CustomTablesEncoder, Protocol):
    """All of the ``ClipEncoder`` service the entry calls."""


@dataclass(frozen=True)
class Entry:
    settings: Settings
    items: ItemEncoder
    custom_tables: RemoteCustomTables
    classifier: Classifier
    openai: OpenAIEmbeddings
    weaviate: WeaviateVectorizer
    jobs: JobRegistry
    # Every route's deadline, in-flight limit and error answers (``routes.common.guard``).
    guard: RouteGuard
    # None when this deployment serves CLIP only (CAPTION_MODEL=none).
    interrogation: InterrogationPipeline | None
    # The model services' BentoML clients, whose /readyz the entry's readiness asks.
    dependencies: Sequence[Any]

    @classmethod
    def build(
        cls,
        settings: Settings,
        encoder: ClipEncoderClient,
        captioner: CaptionerClient | None,
        dependencies: Sequence[Any],
    ) -> Entry:
        # Every route's encoder calls, joined while others are in flight (coalescing.py).
        encoder = CoalescingEncoder(
            encoder, settings.text_max_batch_size, settings.image_max_batch_size
        )
        items = ItemEncoder(encoder, settings)
        custom_tables = RemoteCustomTables(encoder, CustomTableLimits.of(settings))
        interrogation = None
        if captioner is not None:
            interrogation = InterrogationPipeline(
                items,
                encoder,
                captioner,
                custom_tables,
                settings.request_timeout_s,
                Admission(settings.max_interrogations, settings.max_queued_interrogations),
            )
        jobs = JobRegistry(
            *_job_state(settings, interrogation),
            settings.max_running_jobs,
            settings.max_unfinished_jobs,
            settings.job_timeout_s,
        )
        return cls(
            settings=settings,
            items=items,
            custom_tables=custom_tables,
            classifier=Classifier(items),
            openai=OpenAIEmbeddings(items),
            weaviate=WeaviateVectorizer(items, settings.max_items, settings.max_json_depth),
            jobs=jobs,
            guard=RouteGuard(settings.request_timeout_s, settings.max_concurrency),
            interrogation=interrogation,
            dependencies=dependencies,
        )

    def interrogating(self) -> InterrogationPipeline:
        """The interrogation pipeline; 501 when this deployment serves CLIP only."""
        if self.interrogation is None:
            raise NotServed(
                "interrogation is off: this server runs CLIP only (CAPTION_MODEL=none); "
                "set CAPTION_MODEL (e.g. blip-base) to serve /caption, /interrogate, "
                "/analyze and /extract_text"
            )
        return self.interrogation

    async def ready(self) -> bool:
        """Whether every model service answers its readiness probe (503 at once when not)."""
        return await dependencies_ready(self.dependencies, self.settings.readiness_timeout_s)


def _job_state(
    settings: Settings, interrogation: InterrogationPipeline | None
) -> tuple[JobStore, ProgressSource]:
    """Where jobs and their progress are kept: Redis when ``REDIS_URL`` is set (replicas on
    several hosts; the encoders write progress there too), else the host's SQLite file with
    progress asked of the encoder."""
    store, shared_progress = job_state(settings.redis_url, settings.jobs_db, settings.job_ttl_s)
    if shared_progress:
        return store, shared_progress.read
    return store, interrogation.chain_step if interrogation else _no_progress


async def _no_progress(key: str) -> None:
    """A CLIP-only deployment runs no chain."""
    return None
