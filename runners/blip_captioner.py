"""BlipCaptioner: caption generation (BLIP, BLIP-2, GIT or Florence-2) as a BentoML service,
behind a scheduler. The name stays BLIP's, which split deployments address it by.

Images arrive decoded and preprocessed by the entry service (``CaptionerInfo.preprocess``
says how), so a batch holds only valid pixel arrays and one generate call serves it.
Only started when ``CAPTION_MODEL`` is not ``none``.
"""

from __future__ import annotations

import bentoml
import numpy as np

from clip_service.engines.caption_engine import CaptionEngine
from clip_service.metrics import SchedulerMetrics
from clip_service.models.captioning import (
    CaptionDetail,
    Captioner,
    CaptionerInfo,
    CaptionPreprocessor,
    GenerationSettings,
)
from clip_service.scheduling import Priority
from clip_service.settings import get_settings
from runners.model_service import (
    answer_overload_with_429,
    exit_unless_loadable,
    guard,
    model_service_config,
)


# The service reads its settings (``get_settings()``, cached per process) when it starts
# (``__init__``), so a test that sets the environment and clears the cache first is served
# with them; BentoML's decorator takes only its worker count and time limits, at import.
@bentoml.service(**model_service_config("BlipCaptioner", get_settings().caption_workers))
class BlipCaptioner:
    @bentoml.on_deployment
    def fetch_model() -> None:
        """Runs once in the serving process: fail with one clear line if unavailable."""
        exit_unless_loadable(lambda: CaptionPreprocessor.load(get_settings().caption_model))

    def __init__(self) -> None:
        settings = get_settings()
        generation = GenerationSettings(
            max_new_tokens=settings.caption_max_new_tokens,
            num_beams=settings.caption_num_beams,
            min_length=settings.caption_min_length,
            repetition_penalty=settings.caption_repetition_penalty,
        )
        captioner = Captioner.load(settings.caption_model, settings.device, generation)
        self.engine = CaptionEngine(
            captioner,
            settings.caption_max_batch_size,
            slice_s=settings.bulk_slice_ms / 1000,
            max_wait_s=settings.max_latency_ms / 1000,
            observer=SchedulerMetrics("BlipCaptioner"),
        )

    @bentoml.api
    async def caption(
        self,
        pixels: np.ndarray,
        priority: Priority = Priority.INTERACTIVE,
        detail: CaptionDetail | None = None,
    ) -> list[str]:
        """(n, 3, H, W) preprocessed pixels -> n captions (of ``detail``, where the model
        offers levels; the entry checks it against ``info().caption_details``)."""
        with answer_overload_with_429():
            return await self.engine.caption(pixels, priority, detail)

    @bentoml.api
    def info(self) -> CaptionerInfo:
        return self.engine.info()


guard(BlipCaptioner)
