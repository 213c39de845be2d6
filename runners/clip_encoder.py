"""ClipEncoder: the CLIP image and text towers as a BentoML service with adaptive batching.

Requests from every caller are micro-batched per API (``max_batch_size`` /
``max_latency_ms`` from settings). Inputs arrive validated and preprocessed by the entry
service, so one request can never fail the others in its batch.
"""

from __future__ import annotations

import bentoml
import numpy as np

from clip_service.clip_model import ModelInfo, load_configured_clip_model, pick_device
from clip_service.hub import fetch_clip_files
from clip_service.metrics import batch_metrics
from clip_service.precision import plan
from clip_service.settings import get_settings
from clip_service.specs import parse_clip_spec
from runners.model_service import drain_on_sigterm, exit_unless_loadable, model_service_config

settings = get_settings()


@bentoml.service(**model_service_config("ClipEncoder", settings.encoder_workers))
class ClipEncoder:
    @bentoml.on_deployment
    def fetch_model() -> None:
        """Runs once in the serving process: download, or exit with one clear line."""
        exit_unless_loadable(lambda: fetch_clip_files(parse_clip_spec(settings.clip_model)))
        device = pick_device(settings.device)
        exit_unless_loadable(lambda: plan(device, settings.clip_precision, settings.image_runtime))

    def __init__(self) -> None:
        self.model = load_configured_clip_model(settings)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.image_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    @batch_metrics("ClipEncoder", "encode_images")
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, d) raw image embeddings."""
        return self.model.encode_images(pixels)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.text_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    @batch_metrics("ClipEncoder", "encode_texts")
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, d) raw text embeddings (truncated to the model's context)."""
        return self.model.encode_texts(texts)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.text_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def encode_texts_full_context(self, texts: list[str]) -> np.ndarray:
        """Texts -> raw embeddings, each run through the whole context even when trimming
        is on: clip-interrogator's label tables, whose float16 rounding must be the library's."""
        return self.model.encode_texts(texts, full_context=True)

    @bentoml.api
    def encode_texts_sharing_prefix(self, texts: list[str]) -> np.ndarray:
        """Texts sharing a long prefix (one interrogation chain step) -> raw embeddings.

        Not batched: a chain step is already a batch, and its prefix runs once.
        """
        return self.model.encode_texts_sharing_prefix(texts)

    @bentoml.api
    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.model.count_tokens(texts)

    @bentoml.api
    def info(self) -> ModelInfo:
        return self.model.info()


drain_on_sigterm(ClipEncoder)
