"""BlipCaptioner: BLIP caption generation as a BentoML service with adaptive batching.

Images arrive decoded and preprocessed by the entry service (``CaptionerInfo.preprocess``
says how), so a batch holds only valid pixel arrays and one generate call serves it.
"""

from __future__ import annotations

import bentoml
import numpy as np

from clip_service.captioning import (
    Captioner,
    CaptionerInfo,
    CaptionPreprocessor,
    GenerationSettings,
)
from clip_service.metrics import batch_metrics
from clip_service.settings import get_settings
from runners.model_service import drain_on_sigterm, exit_unless_loadable, model_service_config

settings = get_settings()

GENERATION = GenerationSettings(
    max_new_tokens=settings.caption_max_new_tokens,
    num_beams=settings.caption_num_beams,
    min_length=settings.caption_min_length,
    repetition_penalty=settings.caption_repetition_penalty,
)


@bentoml.service(**model_service_config("BlipCaptioner", settings.caption_workers))
class BlipCaptioner:
    @bentoml.on_deployment
    def fetch_model() -> None:
        """Runs once in the serving process: fail with one clear line if unavailable."""
        exit_unless_loadable(lambda: CaptionPreprocessor.load(settings.caption_model))

    def __init__(self) -> None:
        self.captioner = Captioner.load(settings.caption_model, settings.device, GENERATION)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.caption_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    @batch_metrics("BlipCaptioner", "caption")
    def caption(self, pixels: np.ndarray) -> list[str]:
        """(n, 3, H, W) preprocessed pixels -> n captions."""
        return self.captioner.caption_pixels(pixels)

    @bentoml.api
    def info(self) -> CaptionerInfo:
        return self.captioner.info()


drain_on_sigterm(BlipCaptioner)
