"""The captioner architectures served, and what differs between them.

BLIP, BLIP-2 and GIT are loaded and prompted as clip-interrogator 0.6.0 does
(``Interrogator.load_caption_model`` / ``generate_caption``): the image alone through
``AutoProcessor``, ``generate(max_new_tokens=32)``, ``batch_decode(skip_special_tokens=True)``
stripped; fp16 on CUDA except GIT, which 0.6.0 keeps in fp32. Florence-2 (transformers'
native ``Florence2ForConditionalGeneration``) is prompted with a caption task token and its
answer parsed by its processor's ``post_process_generation``, as its model card does
(``max_new_tokens=1024, num_beams=3``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from clip_interrogator.clip_interrogator import CAPTION_MODELS
from transformers import (
    AutoModelForCausalLM,
    Blip2ForConditionalGeneration,
    BlipForConditionalGeneration,
    Florence2ForConditionalGeneration,
    PretrainedConfig,
)

from clip_service.models.specs import ModelSpecError

__all__ = [
    "CAPTION_ALIASES",
    "FAMILIES",
    "CaptionDetail",
    "CaptionFamily",
    "family_of_config",
]


class CaptionDetail(StrEnum):
    """How long a caption a request asks for, where the captioner offers a choice."""

    BRIEF = "brief"
    DETAILED = "detailed"
    MORE_DETAILED = "more_detailed"


@dataclass(frozen=True)
class CaptionFamily:
    """One captioner architecture: how it is loaded, prompted and decoded."""

    name: str  # as GET /model reports it
    model_type: str  # config.json's
    architecture: str  # the class, among config.json's architectures (same types do more)
    load: Callable[..., Any]  # from_pretrained of the class its reference loads it with
    half_on_cuda: bool  # fp16 on CUDA (else fp32 everywhere)
    # Detail level -> the model's task token; empty: the model makes one kind of caption.
    tasks: Mapping[CaptionDetail, str] = field(default_factory=dict)
    # generate() defaults of its reference, where the server's settings leave them unset.
    generation: Mapping[str, Any] = field(default_factory=lambda: {"max_new_tokens": 32})

    @property
    def details(self) -> list[CaptionDetail]:
        return list(self.tasks)

    def task(self, detail: CaptionDetail | None) -> str | None:
        """The task token for ``detail`` (None: the first, the briefest); None for a model
        without tasks. Raises ``ValueError`` naming ``caption_detail`` for one it lacks."""
        if not self.tasks:
            if detail is None:
                return None
            raise ValueError(
                f"caption_detail: the served captioner ({self.name}) makes one kind of "
                "caption and takes no caption_detail; leave it out"
            )
        if detail is None:
            return next(iter(self.tasks.values()))
        if detail not in self.tasks:
            offered = ", ".join(self.tasks)
            raise ValueError(f"caption_detail: '{detail}' is not one of {offered}")
        return self.tasks[detail]


BLIP = CaptionFamily(
    "blip",
    "blip",
    "BlipForConditionalGeneration",
    BlipForConditionalGeneration.from_pretrained,
    True,
)
BLIP2 = CaptionFamily(
    "blip-2",
    "blip-2",
    "Blip2ForConditionalGeneration",
    Blip2ForConditionalGeneration.from_pretrained,
    True,
)
# 0.6.0 loads GIT with AutoModelForCausalLM (GitForCausalLM), in fp32 even on CUDA.
GIT = CaptionFamily("git", "git", "GitForCausalLM", AutoModelForCausalLM.from_pretrained, False)
FLORENCE2 = CaptionFamily(
    "florence-2",
    "florence2",
    "Florence2ForConditionalGeneration",
    Florence2ForConditionalGeneration.from_pretrained,
    True,
    tasks={
        CaptionDetail.BRIEF: "<CAPTION>",
        CaptionDetail.DETAILED: "<DETAILED_CAPTION>",
        CaptionDetail.MORE_DETAILED: "<MORE_DETAILED_CAPTION>",
    },
    generation={"max_new_tokens": 1024, "num_beams": 3},
)
FAMILIES = (BLIP, BLIP2, GIT, FLORENCE2)

# clip-interrogator 0.6.0's aliases, and Florence-2's native-format repos.
CAPTION_ALIASES = {
    **CAPTION_MODELS,
    "florence-2-base": "florence-community/Florence-2-base",
    "florence-2-large": "florence-community/Florence-2-large",
}


def family_of_config(spec: str, config: PretrainedConfig) -> CaptionFamily:
    """The family of a model by its ``config.json``, before any weights are read."""
    architectures = config.architectures or []
    for family in FAMILIES:
        named = not architectures or family.architecture in architectures
        if config.model_type == family.model_type and named:
            return family
    found = ", ".join(architectures) or config.model_type
    served = ", ".join(f"{family.name} ({family.architecture})" for family in FAMILIES)
    raise ModelSpecError(f"{spec!r} is a {found} model; the captioners served are {served}")
