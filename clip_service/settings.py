"""Server settings, read once from the environment (names are the upper-case field names).

Every setting is documented in the README ("Settings"); the defaults are safe for a
public deployment on a small CPU machine.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .precision import PrecisionSetting, RuntimeSetting
from .url_fetch import UrlPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    clip_model: str = "ViT-B-32:openai"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Text tower only up to each batch's longest text, and chain steps' shared prefix run
    # once; false: every text through the whole context, as the libraries do (README).
    trim_text_padding: bool = True
    # Numerics and kernels of the CLIP towers (README, "Precision and image runtime"):
    # fp32 on CPU / fp16 on CUDA by default; bf16 and int8 are opt-in approximations.
    clip_precision: PrecisionSetting = "auto"
    # auto: ONNX Runtime for the image tower on CPU when it matches eager torch, else torch.
    image_runtime: RuntimeSetting = "auto"
    onnx_cache_dir: Path = Path.home() / ".cache" / "clip-service" / "onnx"
    # Decode JPEGs at reduced scale (>= 2x the model input) before resizing: much faster for
    # large photos, embeddings change slightly (README, "JPEG draft decoding").
    jpeg_draft: bool = False

    # The model services' schedulers (README, "Scheduling"). An idle model starts a request
    # at once; requests that arrive meanwhile form the next batch, up to these sizes.
    image_max_batch_size: int = Field(32, ge=1)
    text_max_batch_size: int = Field(256, ge=1)
    # Interrogation steps and label-table builds run in slices of about this much model
    # time, so an interactive request waits at most one slice behind them.
    bulk_slice_ms: float = Field(50, gt=0)
    # An interactive request that would wait longer than this in a model's queue is refused
    # at once (503 with Retry-After) rather than queued.
    max_latency_ms: int = Field(60_000, ge=1)
    encoder_workers: int = Field(1, ge=1)
    # The entry service's limit for one request (BentoML answers 504 past it). An
    # interrogation waits for label tables that are still being built only if they should be
    # ready within it; otherwise it is answered 503 at once with the build's progress.
    request_timeout_s: float = Field(600, gt=0)
    # On SIGTERM a model service serves on until idle this long (the entry service is done).
    shutdown_quiet_s: float = Field(5.0, ge=0)

    # BLIP captioner service; generation defaults are clip-interrogator 0.6.0's. "none":
    # CLIP only (no captioner, no label tables; the interrogation routes answer 501).
    caption_model: str = "blip-base"
    caption_max_batch_size: int = Field(8, ge=1)
    caption_workers: int = Field(1, ge=1)
    caption_max_new_tokens: int = Field(32, ge=1)
    caption_num_beams: int | None = Field(None, ge=1)
    caption_min_length: int | None = Field(None, ge=0)
    caption_repetition_penalty: float | None = Field(None, gt=0)

    # Split deployment: the model services' base URLs (each its own `bentoml serve`, host or
    # Kubernetes Service). Unset: `bentoml serve` starts them beside the entry service.
    clip_encoder_url: str | None = None
    captioner_url: str | None = None
    # The entry's /readyz waits at most this long for each model service's /readyz.
    readiness_timeout_s: float = Field(2.0, gt=0)

    # Fetch the label tables clip-interrogator publishes for the CLIP model (when it is one
    # of its open_clip models and the Hub is reachable) instead of encoding them here.
    label_tables_download: bool = True
    # Interrogation label-table embeddings, one safetensors file per model and table.
    label_cache_dir: Path = Path.home() / ".cache" / "clip-service" / "label-embeddings"

    # Input limits (README, "Limits").
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_items: int = Field(1024, ge=1)
    max_text_chars: int = Field(4096, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    url_timeout_s: float = Field(10.0, gt=0)
    url_max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    # img_uri hosts, IPs or CIDRs fetched even though private or local (comma-separated).
    url_allow: str = ""

    # Browser clients: comma-separated origins allowed by CORS ("*" for any; empty: off).
    cors_allow_origins: str = ""

    @property
    def interrogation(self) -> bool:
        """Whether the BLIP captioner and the label tables are served."""
        return self.caption_model.strip().lower() != "none"

    @property
    def url_policy(self) -> UrlPolicy:
        allow = tuple(entry.strip() for entry in self.url_allow.split(",") if entry.strip())
        return UrlPolicy(timeout_s=self.url_timeout_s, max_bytes=self.url_max_bytes, allow=allow)

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]


@cache
def get_settings() -> Settings:
    return Settings()
