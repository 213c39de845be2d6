"""The captioner as one model worker serves it, behind its scheduler."""

from __future__ import annotations

from functools import partial

import numpy as np

from clip_service.models.captioning import CaptionDetail, Captioner, CaptionerInfo
from clip_service.scheduling import Method, Priority, Scheduler, SchedulerObserver


class CaptionEngine:
    """Captions for preprocessed pixels, batched across callers, interactive ones first.

    One scheduler method per caption task (Florence-2's detail levels): a batch is one
    ``generate`` call, and the images of one call share their prompt.
    """

    def __init__(
        self,
        captioner: Captioner,
        max_batch: int,
        *,
        slice_s: float,
        max_wait_s: float,
        observer: SchedulerObserver | None = None,
    ) -> None:
        self.captioner = captioner
        details = captioner.family.details or [None]
        methods = [
            Method(_method(detail), partial(captioner.caption_pixels, detail=detail), max_batch)
            for detail in details
        ]
        self._default = details[0]
        self.scheduler = Scheduler(
            methods,
            slice_s=slice_s,
            max_wait_s=max_wait_s,
            observer=observer,
            thread_name="captioner",
        )

    async def caption(
        self,
        pixels: np.ndarray,
        priority: Priority = Priority.INTERACTIVE,
        detail: CaptionDetail | None = None,
    ) -> list[str]:
        """(n, 3, H, W) preprocessed pixels -> n captions, of ``detail`` where the model offers
        levels (None: its briefest). ``ValueError`` naming ``caption_detail`` for a level it
        does not offer, before anything is queued."""
        self.captioner.family.task(detail)
        return await self.scheduler.run(_method(detail or self._default), pixels, priority)

    def info(self) -> CaptionerInfo:
        return self.captioner.info()


def _method(detail: CaptionDetail | None) -> str:
    return "caption" if detail is None else f"caption_{detail}"
