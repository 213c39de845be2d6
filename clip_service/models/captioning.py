"""BLIP captioning as clip-interrogator 0.6.0 does it, but batched and splittable.

0.6.0's ``Interrogator.generate_caption`` captions one image: ``AutoProcessor`` preprocessing,
``BlipForConditionalGeneration.generate(max_new_tokens=32)`` (fp16 on CUDA, fp32 elsewhere),
``batch_decode(skip_special_tokens=True)[0].strip()``. Here one ``generate`` call serves a whole
batch, and the two halves can live in different processes: the entry service runs
:meth:`CaptionPreprocessor.preprocess` (CPU, no weights), the model service runs
:meth:`Captioner.caption_pixels` on the arrays it is sent.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from clip_interrogator.clip_interrogator import CAPTION_MODELS
from PIL import Image
from pydantic import BaseModel
from transformers import (
    AutoConfig,
    AutoProcessor,
    BlipForConditionalGeneration,
    PretrainedConfig,
    ProcessorMixin,
)

from clip_service.models.clip import ModelUnavailableError
from clip_service.models.preprocess import PreprocessConfig
from clip_service.models.specs import ModelSpecError

__all__ = [
    "CaptionPreprocessor",
    "Captioner",
    "CaptionerInfo",
    "GenerationSettings",
    "ModelUnavailableError",
    "resolve_caption_model",
]

_T = TypeVar("_T")
_HF_REPO_ID = re.compile(r"^\w[\w.-]*/[\w.-]+$")
# 0.6.0 loads every alias but these with BlipForConditionalGeneration (see load_caption_model).
_NOT_BLIP_PREFIXES = ("blip2-", "git-")
_BLIP_ARCHITECTURE = BlipForConditionalGeneration.__name__
_ONLY_BLIP = (
    f"only BLIP captioners ({_BLIP_ARCHITECTURE}, e.g. blip-base, blip-large) are supported"
)


def resolve_caption_model(spec: str) -> str:
    """A clip-interrogator alias, Hub repo id or local directory -> what ``from_pretrained`` takes.

    Raises :class:`ModelSpecError` (a ``ValueError``) for specs that cannot name a BLIP captioner.
    """
    name = spec.strip()
    if not name:
        raise ModelSpecError("empty caption model spec")
    if name in CAPTION_MODELS:
        if name.startswith(_NOT_BLIP_PREFIXES):
            raise ModelSpecError(f"{spec!r}: {_ONLY_BLIP}")
        return CAPTION_MODELS[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{spec!r}: no config.json in {path} (not a save_pretrained dir)")
        return str(path.resolve())
    if name.startswith(("/", ".", "~")) or "\\" in name:
        raise ModelSpecError(f"{spec!r}: no such directory")
    if _HF_REPO_ID.match(name):
        return name
    aliases = ", ".join(a for a in CAPTION_MODELS if not a.startswith(_NOT_BLIP_PREFIXES))
    raise ModelSpecError(
        f"{spec!r}: not a caption model alias ({aliases}), a Hugging Face repo id 'org/name' "
        "or a local model directory"
    )


@dataclass(frozen=True)
class GenerationSettings:
    """``generate`` arguments for captions.

    The defaults are 0.6.0's: ``max_new_tokens=32`` and the model's own generation config for
    the rest (greedy search for the Salesforce BLIP checkpoints). ``None`` leaves a setting to
    the model. ``min_length`` counts the decoder's start token, as transformers does.
    """

    max_new_tokens: int = 32
    num_beams: int | None = None
    min_length: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        # Checked here so a bad server setting fails at startup, not on the first request.
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.num_beams is not None and self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if self.min_length is not None and self.min_length < 0:
            raise ValueError("min_length must not be negative")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be positive")

    def generate_kwargs(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class CaptionerInfo(BaseModel):
    """What the entry service needs to know about the served captioner."""

    spec: str
    source: str
    device: str
    dtype: str
    generation: dict[str, Any]
    preprocess: PreprocessConfig


class CaptionPreprocessor:
    """The CPU half of captioning: BLIP's processor without the model weights."""

    def __init__(self, spec: str, source: str, processor: ProcessorMixin) -> None:
        self.spec = spec
        self.source = source  # repo id or absolute directory, for the model-info route
        self.processor = processor

    @classmethod
    def load(cls, spec: str) -> CaptionPreprocessor:
        source = _load_blip_config(spec)[0]
        return cls(spec, source, _from_pretrained(AutoProcessor.from_pretrained, spec, source))

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resize and normalise like 0.6.0: float32 ``N x 3 x H x W`` pixel values."""
        if not images:
            raise ValueError("no images to preprocess")
        batch = self.processor(images=list(images), return_tensors="pt")
        return batch["pixel_values"].numpy().astype(np.float32, copy=False)


class Captioner(CaptionPreprocessor):
    """A BLIP captioner, loaded once; ``caption(images) == caption_pixels(preprocess(images))``."""

    def __init__(
        self,
        spec: str,
        source: str,
        processor: ProcessorMixin,
        model: BlipForConditionalGeneration,
        settings: GenerationSettings,
    ) -> None:
        super().__init__(spec, source, processor)
        self.model = model
        self.settings = settings

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def load(
        cls,
        spec: str,
        device: str | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> Captioner:
        """Load ``spec`` on ``device`` (default: CUDA in fp16 when present, else CPU in fp32).

        Raises :class:`ModelSpecError` for a non-BLIP model and :class:`ModelUnavailableError`
        (one line) when it cannot be read, e.g. a Hub model neither cached nor downloadable.
        """
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        target = torch.device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32  # as 0.6.0
        source, config = _load_blip_config(spec)
        load_model = BlipForConditionalGeneration.from_pretrained
        model = _from_pretrained(load_model, spec, source, config=config, dtype=dtype)
        processor = _from_pretrained(AutoProcessor.from_pretrained, spec, source)
        return cls(spec, source, processor, model.to(target).eval(), settings)

    def info(self) -> CaptionerInfo:
        image_processor = self.processor.image_processor
        return CaptionerInfo(
            spec=self.spec,
            source=self.source,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            generation=self.settings.generate_kwargs(),
            preprocess=PreprocessConfig(kind="transformers", params=image_processor.to_dict()),
        )

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return self.caption_pixels(self.preprocess(images)) if images else []

    def caption_pixels(self, pixel_values: np.ndarray) -> list[str]:
        """Captions for :meth:`preprocess`'s output, one ``generate`` call for the batch."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W pixel values, got {pixel_values.shape}")
        if len(pixel_values) == 0:
            return []
        with torch.inference_mode():
            # torch.tensor copies, so read-only arrays (decoded from a request) are fine.
            pixels = torch.tensor(pixel_values, dtype=self.dtype, device=self.device)
            tokens = self.model.generate(pixel_values=pixels, **self.settings.generate_kwargs())
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]


def _load_blip_config(spec: str) -> tuple[str, PretrainedConfig]:
    """Resolve ``spec`` and check its config is a BLIP captioner before loading any weights."""
    source = resolve_caption_model(spec)
    config = _from_pretrained(AutoConfig.from_pretrained, spec, source)
    architectures = config.architectures or [_BLIP_ARCHITECTURE]
    if config.model_type != "blip" or _BLIP_ARCHITECTURE not in architectures:
        found = ", ".join(architectures) if config.architectures else config.model_type
        raise ModelSpecError(f"{spec!r} is a {found} model: {_ONLY_BLIP}")
    return source, config


def _from_pretrained(load: Callable[..., _T], spec: str, source: str, **kwargs: Any) -> _T:
    """``load(source)``, trying the local Hugging Face cache before the Hub.

    Cache first because with the Hub unreachable, transformers retries every file it does not
    find in the cache for about 23 s (a processor asks for several optional ones), and a server
    should not re-resolve a repo's ``main`` at every start.
    """
    local = Path(source).is_dir()
    try:
        if not local:
            with contextlib.suppress(OSError):
                return load(source, local_files_only=True, **kwargs)
        return load(source, **kwargs)
    except OSError as exc:
        reason = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        if local:
            raise ModelUnavailableError(f"Cannot load caption model {spec!r}: {reason}.") from None
        named = repr(spec) if spec == source else f"{spec!r} ({source})"
        raise ModelUnavailableError(
            f"Cannot load caption model {named}: not in the local Hugging Face cache and "
            f"not downloadable ({reason}). Set CAPTION_MODEL to a local directory holding a "
            "BLIP model saved with save_pretrained."
        ) from None
