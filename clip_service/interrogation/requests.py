"""What an interrogation asks for, as one object from the route to the engine.

The route builds a :class:`PromptRequest` from the body; the entry's pipeline, the
encoder service and its engine take that object (the entry fills in the caption it had
generated), rather than each restating the options as parameters. The algorithm itself
(:meth:`~clip_service.interrogation.interrogator.Interrogator.interrogate`) keeps
clip-interrogator 0.6.0's parameters, which its parity tests call it with.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from clip_service.interrogation.interrogator import DEFAULT_MAX_FLAVORS, Mode
from clip_service.models.caption_families import CaptionDetail


class PromptRequest(BaseModel):
    """One interrogation's options."""

    model_config = ConfigDict(frozen=True)

    mode: Mode = Mode.BEST
    caption: str | None = None  # given by the caller, or the one the entry generated
    min_flavors: int = 8
    max_flavors: int | None = None  # None: the library's default for the mode
    label_tables: tuple[str, ...] = ()  # custom label tables ranked beside the prompt
    # The level of the caption made, where the captioner offers levels (Florence-2).
    caption_detail: CaptionDetail | None = None

    @property
    def needs_caption(self) -> bool:
        """Whether a caption must be generated (none given, and the mode uses one)."""
        return self.mode is not Mode.NEGATIVE and not self.caption

    @property
    def cost(self) -> float:
        """Relative model time: best and negative modes run one chain step (about 2,000
        prompts through the text tower) per flavor; the others a few rankings."""
        if self.mode in (Mode.BEST, Mode.NEGATIVE):
            flavors = self.max_flavors or DEFAULT_MAX_FLAVORS[self.mode]
            return 1.0 + flavors
        return 1.0

    def with_caption(self, caption: str) -> PromptRequest:
        return self.model_copy(update={"caption": caption})
