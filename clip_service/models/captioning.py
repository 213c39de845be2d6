"""Captioning as clip-interrogator 0.6.0 (BLIP, BLIP-2, GIT) or the model card (Florence-2)
does it, but batched and splittable.

0.6.0's ``Interrogator.generate_caption`` captions one image: ``AutoProcessor`` preprocessing,
``generate(max_new_tokens=32)``, ``batch_decode(skip_special_tokens=True)[0].strip()``; what
differs per architecture is in :mod:`clip_service.models.caption_families`. Here one
``generate`` call serves a whole batch (of one caption task), and the two halves can live in
different processes: the entry service runs :meth:`CaptionPreprocessor.preprocess` (CPU, no
weights), the model service runs :meth:`Captioner.caption_pixels` on the arrays it is sent.
The text a model is prompted with (Florence-2's task prompt) does not depend on the image, so
the model service makes it once per task and repeats it for each image of a batch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from transformers import (
    AutoConfig,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)

from clip_service.models.caption_families import (
    CAPTION_ALIASES,
    CaptionDetail,
    CaptionFamily,
    family_of_config,
)
from clip_service.models.clip import ModelUnavailableError
from clip_service.models.preprocess import PreprocessConfig
from clip_service.models.specs import ModelSpecError

__all__ = [
    "CaptionDetail",
    "CaptionPreprocessor",
    "Captioner",
    "CaptionerInfo",
    "GenerationSettings",
    "ModelUnavailableError",
    "resolve_caption_model",
]

_T = TypeVar("_T")
_HF_REPO_ID = re.compile(r"^\w[\w.-]*/[\w.-]+$")


def resolve_caption_model(spec: str) -> str:
    """An alias (clip-interrogator's, or ``florence-2-base``/``-large``), Hub repo id or local
    directory -> what ``from_pretrained`` takes. Which architecture it is is read from its
    ``config.json`` when it is loaded.

    Raises :class:`ModelSpecError` (a ``ValueError``) for specs that cannot name a captioner.
    """
    name = spec.strip()
    if not name:
        raise ModelSpecError("empty caption model spec")
    if name in CAPTION_ALIASES:
        return CAPTION_ALIASES[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"{spec!r}: no config.json in {path} (not a save_pretrained dir)")
        return str(path.resolve())
    if name.startswith(("/", ".", "~")) or "\\" in name:
        raise ModelSpecError(f"{spec!r}: no such directory")
    if _HF_REPO_ID.match(name):
        return name
    aliases = ", ".join(CAPTION_ALIASES)
    raise ModelSpecError(
        f"{spec!r}: not a caption model alias ({aliases}), a Hugging Face repo id 'org/name' "
        "or a local model directory"
    )


@dataclass(frozen=True)
class GenerationSettings:
    """``generate`` arguments for captions.

    ``None`` leaves a setting to the model's family (:meth:`for_family`: 0.6.0's
    ``max_new_tokens=32`` for BLIP, BLIP-2 and GIT; Florence-2's model card's
    ``max_new_tokens=1024, num_beams=3``), then to the model's own generation config (greedy
    search for the Salesforce BLIP checkpoints). ``min_length`` counts the decoder's start
    token, as transformers does.
    """

    max_new_tokens: int | None = None
    num_beams: int | None = None
    min_length: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        # Checked here so a bad server setting fails at startup, not on the first request.
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.num_beams is not None and self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        if self.min_length is not None and self.min_length < 0:
            raise ValueError("min_length must not be negative")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be positive")

    def generate_kwargs(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def for_family(self, family: CaptionFamily) -> GenerationSettings:
        """These settings, with the family's defaults where they leave a setting unset."""
        unset = {
            key: value for key, value in family.generation.items() if getattr(self, key) is None
        }
        return replace(self, **unset)


class CaptionerInfo(BaseModel):
    """What the entry service needs to know about the served captioner."""

    spec: str
    source: str
    family: str = Field(description="blip, blip-2, git or florence-2")
    caption_details: list[CaptionDetail] = Field(
        description="the caption_detail levels it offers; empty: one kind of caption"
    )
    tasks: dict[CaptionDetail, str] = Field(description="each level's task token of the model")
    device: str
    dtype: str
    generation: dict[str, Any]
    preprocess: PreprocessConfig


class CaptionPreprocessor:
    """The CPU half of captioning: the model's processor without the model weights."""

    def __init__(
        self, spec: str, source: str, family: CaptionFamily, processor: ProcessorMixin
    ) -> None:
        self.spec = spec
        self.source = source  # repo id or absolute directory, for the model-info route
        self.family = family
        self.processor = processor

    @classmethod
    def load(cls, spec: str) -> CaptionPreprocessor:
        source, family, _ = _load_config(spec)
        processor = _from_pretrained(AutoProcessor.from_pretrained, spec, source)
        return cls(spec, source, family, processor)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Resize and normalise as the model's processor does: float32 ``N x 3 x H x W``."""
        if not images:
            raise ValueError("no images to preprocess")
        batch = self.processor.image_processor(images=list(images), return_tensors="pt")
        return batch["pixel_values"].numpy().astype(np.float32, copy=False)


class Captioner(CaptionPreprocessor):
    """A captioner, loaded once; ``caption(images) == caption_pixels(preprocess(images))``."""

    def __init__(
        self,
        spec: str,
        source: str,
        family: CaptionFamily,
        processor: ProcessorMixin,
        model: PreTrainedModel,
        settings: GenerationSettings,
    ) -> None:
        super().__init__(spec, source, family, processor)
        self.model = model
        self.settings = settings.for_family(family)
        # The prompt inputs (no pixels) of each task, made once: they do not depend on the image.
        self._prompts = {task: self._prompt(task) for task in [*family.tasks.values()] or [None]}

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
        """Load ``spec`` on ``device`` (default: CUDA when present, else CPU), in fp16 on CUDA
        where its reference does (all but GIT), else fp32.

        Raises :class:`ModelSpecError` for a model that is no served captioner and
        :class:`ModelUnavailableError` (one line) when it cannot be read, e.g. a Hub model
        neither cached nor downloadable.
        """
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        target = torch.device(device)
        source, family, config = _load_config(spec)
        half = target.type == "cuda" and family.half_on_cuda
        dtype = torch.float16 if half else torch.float32
        model = _from_pretrained(family.load, spec, source, config=config, dtype=dtype)
        processor = _from_pretrained(AutoProcessor.from_pretrained, spec, source)
        return cls(spec, source, family, processor, model.to(target).eval(), settings)

    def info(self) -> CaptionerInfo:
        image_processor = self.processor.image_processor
        return CaptionerInfo(
            spec=self.spec,
            source=self.source,
            family=self.family.name,
            caption_details=self.family.details,
            tasks=dict(self.family.tasks),
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            generation=self.settings.generate_kwargs(),
            preprocess=PreprocessConfig(kind="transformers", params=image_processor.to_dict()),
        )

    def caption(
        self, images: Sequence[Image.Image], detail: CaptionDetail | None = None
    ) -> list[str]:
        return self.caption_pixels(self.preprocess(images), detail) if images else []

    def caption_pixels(
        self, pixel_values: np.ndarray, detail: CaptionDetail | None = None
    ) -> list[str]:
        """Captions for :meth:`preprocess`'s output, one ``generate`` call for the batch.

        ``detail`` picks the caption task of a model that has several (None: the briefest);
        ``ValueError`` for a model that has none.
        """
        task = self.family.task(detail)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W pixel values, got {pixel_values.shape}")
        if len(pixel_values) == 0:
            return []
        count = len(pixel_values)
        with torch.inference_mode():
            # torch.tensor copies, so read-only arrays (decoded from a request) are fine.
            pixels = torch.tensor(pixel_values, dtype=self.dtype, device=self.device)
            prompt = {key: value.repeat(count, 1) for key, value in self._prompts[task].items()}
            tokens = self.model.generate(
                pixel_values=pixels, **prompt, **self.settings.generate_kwargs()
            )
        if task is None:
            texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
            return [text.strip() for text in texts]
        # Florence-2: its processor parses the answer, special tokens and all, per task.
        texts = self.processor.batch_decode(tokens, skip_special_tokens=False)
        parse = self.processor.post_process_generation
        return [parse(text, task=task, image_size=None)[task] for text in texts]

    def _prompt(self, task: str | None) -> dict[str, torch.Tensor]:
        """The processor's non-pixel inputs for one image and ``task`` (the text prompt, empty
        for models captioning from the image alone), on the model's device."""
        blank = Image.new("RGB", (64, 64))
        text = {} if task is None else {"text": task}
        inputs = self.processor(images=blank, **text, return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items() if k != "pixel_values"}


def _load_config(spec: str) -> tuple[str, CaptionFamily, PretrainedConfig]:
    """Resolve ``spec`` and find its family from its config, before loading any weights."""
    source = resolve_caption_model(spec)
    config = _from_pretrained(AutoConfig.from_pretrained, spec, source)
    return source, family_of_config(spec, config), config


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
