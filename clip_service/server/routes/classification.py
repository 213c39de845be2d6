"""Zero-shot classification: ``/classify`` (own labels, a stored label set or a custom label
table) and the pet and wearable taggers' multipart contracts, ``/tag`` and ``/wearable``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field

from clip_service.errors import InvalidInput
from clip_service.process.request_ids import echo_headers, request_id
from clip_service.server.classify import DEFAULT_TEMPLATE, LABEL_SETS, Score, parse_template
from clip_service.server.entry import Entry
from clip_service.server.forms import takes
from clip_service.server.limits import check_classify_chars
from clip_service.server.routes.common import MAX_LABELS, guard
from clip_service.server.schemas import (
    ClassifyResult,
    ClassScore,
    ImageItem,
    Tag,
    TagResult,
    Text,
    WearableResult,
)


class ClassificationRoutes:
    entry: Entry

    @bentoml.api(route="/classify")
    @takes("image")
    @guard
    async def classify(
        self,
        image: ImageItem,
        labels: Annotated[list[Text], Field(min_length=1, max_length=MAX_LABELS)] | None = None,
        label_set: Annotated[
            str, Field(description=f"{', '.join(LABEL_SETS)}, or a custom label table's name")
        ]
        | None = None,
        template: Annotated[str, Field(min_length=2, max_length=200)] = DEFAULT_TEMPLATE,
        top_k: Annotated[int, Field(ge=1, le=MAX_LABELS)] = 5,
    ) -> ClassifyResult:
        """Zero-shot classification against ``labels`` (each put in ``template``), a stored
        ``label_set`` or a custom label table (its terms as they are, like
        clip-interrogator's ``LabelTable``); the top-k of each group with probability and
        cosine."""
        if (labels is None) == (label_set is None):
            raise InvalidInput("labels", "give either labels or label_set")
        custom = label_set is not None and label_set not in LABEL_SETS
        if custom and template != DEFAULT_TEMPLATE:
            raise InvalidInput("template", "a custom label table is embedded as its terms")
        parsed = parse_template(template)
        if labels is not None:
            check_classify_chars(labels, template, self.entry.settings.max_classify_chars)
        items = self.entry.items
        vector = await items.encode_image(*await items.image_bytes(image, "image"))
        if custom:
            ranked = await self.entry.custom_tables.rank(vector, [label_set], top_k, "label_set")
            scores = [ClassScore(**t.model_dump(), group=label_set) for t in ranked[label_set]]
            return ClassifyResult(scores=scores)
        scores = await self.entry.classifier.classify(vector, labels, label_set, parsed, top_k)
        return ClassifyResult(scores=[ClassScore(**vars(score)) for score in scores])

    @bentoml.api(route="/tag")
    @takes("file")
    @guard
    async def tag(self, file: Path, ctx: bentoml.Context) -> TagResult:
        """Pet type and fur length of a multipart image in field ``file``."""
        rid, best = await self._classify_upload(file, ctx, "pets", top_k=1)
        tags = [Tag(label=s.label, confidence=s.probability, group=s.group) for s in best]
        return TagResult(request_id=rid, tags=tags)

    @bentoml.api(route="/wearable")
    @takes("file")
    @guard
    async def wearable(self, file: Path, ctx: bentoml.Context) -> WearableResult:
        """The top 3 of 20 wearable categories for a multipart image in field ``file``."""
        rid, top = await self._classify_upload(file, ctx, "wearables", top_k=3)
        return WearableResult(request_id=rid, top_categories=[s.label for s in top])

    async def _classify_upload(
        self, file: Path, ctx: bentoml.Context, label_set: str, top_k: int
    ) -> tuple[str, list[Score]]:
        """(request id, top-k scores per group) for an uploaded image against a stored set."""
        rid = request_id(ctx.request.headers)
        ctx.response.headers.update(echo_headers(rid))
        vector = await self.entry.items.encode_image(file.read_bytes(), "file")
        return rid, await self.entry.classifier.classify(vector, label_set=label_set, top_k=top_k)
