"""ClipEncoder: the CLIP image and text towers as a BentoML service with adaptive batching.

Requests from every caller are micro-batched per API (``max_batch_size`` /
``max_latency_ms`` from settings). Inputs arrive validated and preprocessed by the entry
service, so one request can never fail the others in its batch.
"""

from __future__ import annotations

import bentoml
import numpy as np

from clip_service.clip_model import ModelInfo, load_clip_model
from clip_service.hub import fetch_clip_files
from clip_service.settings import get_settings
from clip_service.specs import parse_clip_spec
from runners.model_service import exit_unless_loadable, model_service_config

settings = get_settings()


@bentoml.service(**model_service_config("ClipEncoder", settings.encoder_workers))
class ClipEncoder:
    @bentoml.on_deployment
    def fetch_model() -> None:
        """Runs once in the serving process: download, or exit with one clear line."""
        exit_unless_loadable(lambda: fetch_clip_files(parse_clip_spec(settings.clip_model)))

    def __init__(self) -> None:
        spec = parse_clip_spec(settings.clip_model)
        self.model = load_clip_model(spec, settings.device, settings.trim_text_padding)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.image_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, d) raw image embeddings."""
        return self.model.encode_images(pixels)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.text_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, d) raw text embeddings (truncated to the model's context)."""
        return self.model.encode_texts(texts)

    @bentoml.api
    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.model.count_tokens(texts)

    @bentoml.api
    def info(self) -> ModelInfo:
        return self.model.info()
