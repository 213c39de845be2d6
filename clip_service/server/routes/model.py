"""What is served: ``GET /model``."""

from __future__ import annotations

from fastapi import APIRouter

from clip_service.server.routes.common import EntryDep, guard
from clip_service.server.schemas import (
    BatchSettings,
    CaptionerSummary,
    InterrogationInfo,
    ServedModel,
)

router = APIRouter()


@router.get("/model", response_model=ServedModel)
@guard
async def served_model(entry: EntryDep) -> ServedModel:
    """Which model is served, where, how requests are batched, and whether interrogation
    is served (its caption model, which captioner family and caption detail levels, and how
    far its label tables are)."""
    settings = entry.settings
    info = await entry.items.model_info()
    interrogation = None
    if entry.interrogation is not None:
        tables = await entry.interrogation.tables()
        captioner = await entry.interrogation.captioner.info()
        interrogation = InterrogationInfo(
            caption_model=settings.caption_model,
            captioner=CaptionerSummary(
                **captioner.model_dump(include=set(CaptionerSummary.model_fields))
            ),
            label_tables=tables,
        )
    batching = BatchSettings(
        image_max_batch_size=settings.image_max_batch_size,
        text_max_batch_size=settings.text_max_batch_size,
        bulk_slice_ms=settings.bulk_slice_ms,
        max_latency_ms=settings.max_latency_ms,
    )
    return ServedModel(
        **info.model_dump(exclude={"preprocess"}), batching=batching, interrogation=interrogation
    )
