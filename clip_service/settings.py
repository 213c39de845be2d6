"""Server settings, read once from the environment (names are the upper-case field names).

Every setting is documented in docs/configuration.md; the defaults are safe for a
public deployment on a small CPU machine.
"""

from __future__ import annotations

import logging
import os
import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from clip_service.inputs.url_fetch import UrlPolicy
from clip_service.models.precision import PrecisionSetting, RuntimeSetting

# An API key: what an Authorization or X-API-Key header can carry, less the comma that
# separates keys in API_KEYS.
_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    clip_model: str = "ViT-B-32:openai"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Text tower only up to each batch's longest text, and chain steps' shared prefix run
    # once; false: every text through the whole context, as the libraries do.
    trim_text_padding: bool = True
    # Numerics and kernels of the CLIP towers (docs/configuration.md, "Precision and runtime"):
    # fp32 on CPU / fp16 on CUDA by default; bf16 and int8 are opt-in approximations.
    clip_precision: PrecisionSetting = "auto"
    # auto: ONNX Runtime for the image tower on CPU when it matches eager torch, else torch.
    image_runtime: RuntimeSetting = "auto"
    onnx_cache_dir: Path = Path.home() / ".cache" / "clip-service" / "onnx"
    # Decode JPEGs at reduced scale (>= 2x the model input) before resizing: much faster for
    # large photos, embeddings change slightly (docs/configuration.md).
    jpeg_draft: bool = False

    # The model services' schedulers (docs/architecture.md, "The scheduler"). An idle model
    # starts a request at once; requests that arrive meanwhile form the next batch, up to
    # these sizes.
    image_max_batch_size: int = Field(32, ge=1)
    text_max_batch_size: int = Field(256, ge=1)
    # Interrogation steps and label-table builds run in slices of about this much model
    # time while interactive requests are about (10x longer otherwise), so an interactive
    # request waits at most one slice behind them.
    bulk_slice_ms: float = Field(20, gt=0)
    # An interactive request that would wait longer than this in a model's queue is refused
    # at once (503 with Retry-After) rather than queued.
    max_latency_ms: int = Field(60_000, ge=1)
    encoder_workers: int = Field(1, ge=1)
    # Interrogations running at once per entry worker and per encoder worker, and waiting
    # behind them; past either, or when one could not finish within its deadline behind
    # the work ahead, it is refused at once (503 with Retry-After).
    max_interrogations: int = Field(2, ge=1)
    max_queued_interrogations: int = Field(16, ge=0)
    # Entry service processes: decoding and preprocessing run in them. Unset: one per four
    # cores (the rest are the model's), at least one; per-worker limits (MAX_CONCURRENCY,
    # MAX_RUNNING_JOBS) apply in each.
    entry_workers: int | None = Field(None, ge=1)

    @property
    def entry_worker_count(self) -> int:
        return self.entry_workers or max(1, (os.cpu_count() or 1) // 4)

    # The entry service's limit for one request (BentoML answers 504 past it). An
    # interrogation waits for label tables that are still being built only if they should be
    # ready within it; otherwise it is answered 503 at once with the build's progress.
    request_timeout_s: float = Field(600, gt=0)
    # State every replica shares (jobs, their progress, custom label tables), in Redis at
    # this URL (redis://host:6379/0), set alike on the entry and encoder replicas. Unset: a
    # SQLite file (JOBS_DB) and a directory (CUSTOM_TABLES_DIR) on this host.
    redis_url: str | None = None
    # Jobs (POST /jobs/...): a SQLite file every entry worker shares; finished jobs are kept
    # this long; at most this many run at once per entry worker, and this many unfinished.
    jobs_db: Path = Path.home() / ".cache" / "clip-service" / "jobs.sqlite3"
    job_ttl_s: float = Field(3600, gt=0)
    job_timeout_s: float = Field(3600, gt=0)
    max_running_jobs: int = Field(2, ge=1)
    max_unfinished_jobs: int = Field(64, ge=1)
    # On SIGTERM a model service serves on until idle this long (the entry service is done).
    shutdown_quiet_s: float = Field(5.0, ge=0)

    # BLIP captioner service; generation defaults are clip-interrogator 0.6.0's. "none":
    # CLIP only (no captioner, no label tables; the interrogation routes answer 501).
    caption_model: str = "blip-base"
    caption_max_batch_size: int = Field(8, ge=1)
    caption_workers: int = Field(1, ge=1)
    # Unset: the captioner family's default (32 as 0.6.0; Florence-2: 1024, its model card's).
    caption_max_new_tokens: int | None = Field(None, ge=1)
    caption_num_beams: int | None = Field(None, ge=1)
    caption_min_length: int | None = Field(None, ge=0)
    caption_repetition_penalty: float | None = Field(None, gt=0)

    # Split deployment: the model services' base URLs (each its own `bentoml serve`, host or
    # Kubernetes Service). Unset: `bentoml serve` starts them beside the entry service.
    clip_encoder_url: str | None = None
    captioner_url: str | None = None
    # The entry's /readyz waits at most this long for each model service's /readyz.
    readiness_timeout_s: float = Field(2.0, gt=0)

    # Names the clip-interrogator extension's clients may send as clip_model_name that this
    # server answers with its own CLIP model (comma-separated, e.g. "ViT-L-14/openai", the
    # extension's default); any other name that is not the served model is a 404.
    clip_model_aliases: str = ""

    @property
    def clip_model_alias_list(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.clip_model_aliases.split(",") if name.strip())

    # Fetch the label tables clip-interrogator publishes for the CLIP model (when it is one
    # of its open_clip models and the Hub is reachable) instead of encoding them here.
    label_tables_download: bool = True
    # Interrogation label-table embeddings, one safetensors file per model and table.
    label_cache_dir: Path = Path.home() / ".cache" / "clip-service" / "label-embeddings"
    # Custom label tables: one <name>.txt per table (one term per line), uploads land here
    # (the default folder keeps its first name, so earlier uploads stay where they were).
    custom_tables_dir: Path = Field(
        Path.home() / ".cache" / "clip-service" / "label-lists",
        validation_alias=AliasChoices("custom_tables_dir", "label_lists_dir"),
    )
    max_custom_tables: int = Field(
        32, ge=1, validation_alias=AliasChoices("max_custom_tables", "max_label_lists")
    )
    max_custom_table_labels: int = Field(
        20_000, ge=1, validation_alias=AliasChoices("max_custom_table_labels", "max_list_labels")
    )

    # Input limits (docs/api.md, "Limits").
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_items: int = Field(1024, ge=1)
    max_text_chars: int = Field(4096, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Pixels decoded at once per entry worker (each image weighs its pixel count, until it
    # has become the model's input): what bounds decoding memory, about 5 bytes per pixel
    # for 8-bit images and up to 20 for 16-bit and float ones (docs/api.md, "Limits").
    # Unset: MAX_IMAGE_PIXELS, so one image of the largest size decodes alone.
    decode_pixel_budget: int | None = Field(None, ge=1)

    @property
    def decode_pixels(self) -> int:
        return self.decode_pixel_budget or self.max_image_pixels

    url_timeout_s: float = Field(10.0, gt=0)
    url_max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    # img_uri hosts, IPs or CIDRs fetched even though private or local (comma-separated).
    url_allow: str = ""

    # Browser clients: comma-separated origins allowed by CORS ("*" for any; empty: off).
    cors_allow_origins: str = ""

    # Access and abuse (docs/api.md, "API keys" and "Limits").
    # API keys, comma-separated, and/or a file of them (one a line, # comments); none: open.
    api_keys: str = ""
    api_keys_file: Path | None = None
    # With keys set, /metrics and the API docs need a key too, unless opened here.
    public_metrics: bool = False
    public_docs: bool = False
    # Requests in flight per entry worker; more are answered 429 at once (0: no limit).
    max_concurrency: int = Field(0, ge=0)
    # A request body must arrive within this (408 and the connection closed past it), and
    # a request's line and headers within header_read_timeout_s of the connection opening
    # or of the previous answer (the connection is closed past it).
    body_read_timeout_s: float = Field(30.0, gt=0)
    header_read_timeout_s: float = Field(10.0, gt=0)
    # The deepest body of this API nests 3 levels; Python's parser recurses once per level
    # and gives up near 1,000, so deeper bodies are refused before anything parses them.
    max_json_depth: int = Field(32, ge=3)
    # Best and negative modes run one chain step (~2,000 candidate prompts through the text
    # tower) per flavor: cost grows linearly. At least 32, the library's default.
    max_flavors: int = Field(48, ge=32)
    # /rank answers a queries x candidates matrix twice (1024 x 1024 is 43 MB of JSON).
    max_rank_pairs: int = Field(65_536, ge=1)
    # /classify: characters of all label texts it encodes (each label in the template).
    max_classify_chars: int = Field(250_000, ge=1)
    # img_uri items of one request, fetched concurrently, each up to url_max_bytes.
    max_url_items: int = Field(32, ge=0)

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

    @model_validator(mode="after")
    def _keys_readable(self) -> Settings:
        """A key file that cannot be read, or holds no key, stops the start: running open
        by mistake is worse than not running."""
        self.api_key_list  # noqa: B018 (read for its errors)
        return self

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """Every key of ``API_KEYS`` and ``API_KEYS_FILE`` (the file is read again each time)."""
        keys = [key.strip() for key in self.api_keys.split(",") if key.strip()]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"api_keys_file: cannot read it ({exc})") from None
            from_file = [line.strip() for line in lines]
            from_file = [key for key in from_file if key and not key.startswith("#")]
            if not from_file:
                raise ValueError(f"api_keys_file: no key in {self.api_keys_file}")
            keys += from_file
        for key in keys:
            if not _KEY.match(key):
                raise ValueError("api keys: a key must be visible ASCII, no spaces or commas")
        return tuple(keys)


# Settings renamed (old name -> new name): the old one is still read, with a warning.
RENAMED = {
    "LABEL_LISTS_DIR": "CUSTOM_TABLES_DIR",
    "MAX_LABEL_LISTS": "MAX_CUSTOM_TABLES",
    "MAX_LIST_LABELS": "MAX_CUSTOM_TABLE_LABELS",
}


@cache
def get_settings() -> Settings:
    for old, new in RENAMED.items():
        if old in os.environ:
            where = "ignored: " if new in os.environ else "read as "
            logger.warning("setting %s is deprecated (%s%s): rename it", old, where, new)
    return Settings()
