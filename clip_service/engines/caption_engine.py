"""The BLIP captioner as one model worker serves it, behind its scheduler."""

from __future__ import annotations

import numpy as np

from clip_service.models.captioning import Captioner, CaptionerInfo
from clip_service.scheduling import Method, Priority, Scheduler, SchedulerObserver


class CaptionEngine:
    """Captions for preprocessed pixels, batched across callers, interactive ones first."""

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
        self.scheduler = Scheduler(
            [Method("caption", captioner.caption_pixels, max_batch)],
            slice_s=slice_s,
            max_wait_s=max_wait_s,
            observer=observer,
            thread_name="blip",
        )

    async def caption(
        self, pixels: np.ndarray, priority: Priority = Priority.INTERACTIVE
    ) -> list[str]:
        """(n, 3, H, W) preprocessed pixels -> n captions."""
        return await self.scheduler.run("caption", pixels, priority)

    def info(self) -> CaptionerInfo:
        return self.captioner.info()
