"""Request and response bodies of the HTTP API (pydantic, so Swagger shows them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clip_service.inputs.url_fetch import MAX_URL_CHARS
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.table_build import TablesStatus
from clip_service.models.clip import ModelSummary
from clip_service.settings import get_settings

# Text and item limits are part of the OpenAPI document: read when the routes are declared
# (the in-process tests set the environment before importing the service).
_settings = get_settings()

Text = Annotated[str, Field(min_length=1, max_length=_settings.max_text_chars)]


class ImageItem(BaseModel):
    """An image: an http(s) URL or base64 bytes."""

    model_config = ConfigDict(extra="forbid")

    img_uri: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)] | None = None
    img_blob: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="base64 image, plain or as a data:image/...;base64, URI"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageItem:
        if (self.img_uri is None) == (self.img_blob is None):
            raise ValueError("exactly one of img_uri, img_blob is required")
        return self


class Item(ImageItem):
    """One input of the clip-api-service contract: a text, an image URL or a base64 image."""

    text: Text | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Item:  # replaces the image-only rule of ImageItem
        given = [name for name in ("text", "img_uri", "img_blob") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("exactly one of text, img_uri, img_blob is required")
        return self


Items = Annotated[list[Item], Field(min_length=1, max_length=_settings.max_items)]


class RankResult(BaseModel):
    probabilities: list[list[float]] = Field(
        description="per query and candidate, by the model's rule (GET /model scoring): "
        "softmax over the candidates of logit_scale * cosine (CLIP), or "
        "sigmoid(logit_scale * cosine + logit_bias) per pair (SigLIP)"
    )
    cosine_similarities: list[list[float]]


class VectorResult(BaseModel):
    vector: list[float]


class CaptionResult(BaseModel):
    caption: str


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="cosine similarity of the label to the image")


class InterrogateResult(BaseModel):
    prompt: str
    caption: str = Field(description="the caption the prompt starts from; empty in negative mode")
    mode: Mode
    label_tables: dict[str, list[LabelScore]] | None = Field(
        None, description="the top 5 terms of each custom label table asked for"
    )


class AnalyzeResult(BaseModel):
    mediums: list[LabelScore]
    artists: list[LabelScore]
    movements: list[LabelScore]
    trendings: list[LabelScore]
    flavors: list[LabelScore]
    label_tables: dict[str, list[LabelScore]] | None = Field(
        None, description="the custom label tables asked for"
    )


class TextResult(BaseModel):
    text: str


class ClassScore(BaseModel):
    label: str
    probability: float = Field(description="softmax over the label's group")
    cosine: float
    group: str | None = Field(description="the stored set's group; null for caller labels")


class ClassifyResult(BaseModel):
    scores: list[ClassScore] = Field(description="per group, most probable first")


class Tag(BaseModel):
    label: str
    confidence: float
    group: str


class TagResult(BaseModel):
    request_id: str
    tags: list[Tag] = Field(description="the most probable pet type and fur length")


class WearableResult(BaseModel):
    request_id: str
    top_categories: list[str]


class BatchSettings(BaseModel):
    image_max_batch_size: int
    text_max_batch_size: int
    bulk_slice_ms: float
    max_latency_ms: int


class CaptionerSummary(BaseModel):
    family: str = Field(description="blip, blip-2, git or florence-2")
    caption_details: list[str] = Field(
        description="the caption_detail levels /caption and /interrogate take; empty: none"
    )
    tasks: dict[str, str] = Field(description="each level's task token of the model")


class InterrogationInfo(BaseModel):
    caption_model: str
    captioner: CaptionerSummary
    label_tables: TablesStatus


class ServedModel(ModelSummary):
    """``GET /model``: which model is served, where, how requests are batched, and whether
    interrogation is served (null: CLIP only)."""

    batching: BatchSettings
    interrogation: InterrogationInfo | None
