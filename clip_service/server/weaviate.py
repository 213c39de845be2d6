"""Weaviate's ``multi2vec-clip`` inference contract, so a Weaviate configured with
``CLIP_INFERENCE_API=http://<this server>:3000`` vectorizes through this service.

As written in Weaviate's module (``modules/multi2vec-clip/clients``) and its reference
container (``weaviate/multi2vec-clip-inference``):

* ``GET /.well-known/live`` and ``/.well-known/ready``: 204 (Weaviate waits at start-up
  until ready answers 2xx within 500 ms);
* ``GET /meta``: any JSON object (Weaviate shows it in its own ``/v1/meta``);
* ``POST /vectorize`` with ``{"texts": [...], "images": [...]}`` (images are plain base64
  of the file, no data-URI prefix; Go marshals an empty list as ``[]`` and a nil one as
  ``null``), sent **without a Content-Type**, answered ``{"textVectors": [...],
  "imageVectors": [...]}``, each vector L2-normalised (the reference container normalises;
  Weaviate averages the vectors of an object's fields and does not). Weaviate reads an
  error's ``error`` as a string, which is this project's error shape.

``/vectorize`` also takes raw image bytes (its own contract). No image format Pillow reads
starts with ``{``, and Weaviate sends no Content-Type to go by, so a body that is a JSON
object is Weaviate's request and anything else an image.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import BaseModel, Field, ValidationError

from clip_service.errors import InvalidInput, validation_message
from clip_service.inputs.json_depth import exceeds_depth
from clip_service.models.ranking import l2_normalize
from clip_service.server.encoding import ItemEncoder
from clip_service.server.schemas import Item


class VectorizeRequest(BaseModel):
    texts: list[str] | None = None
    images: list[str] | None = None


class VectorizeResult(BaseModel):
    textVectors: list[list[float]] = Field(description="L2-normalised, one per text")
    imageVectors: list[list[float]] = Field(description="L2-normalised, one per image")


def is_vectorize_request(body: bytes) -> bool:
    """Whether a ``/vectorize`` body is Weaviate's JSON request (see the module docstring)."""
    return body.lstrip()[:1] == b"{"


class WeaviateVectorizer:
    def __init__(self, items: ItemEncoder, max_items: int, max_json_depth: int) -> None:
        self.items, self.max_items, self.max_json_depth = items, max_items, max_json_depth

    async def vectorize(self, body: bytes) -> VectorizeResult:
        # Read as raw bytes, the body skipped the request reader's JSON checks.
        if exceeds_depth(body, self.max_json_depth):
            raise InvalidInput("body", f"JSON nested deeper than {self.max_json_depth} levels")
        request = _parse(body)
        texts, images = request.texts or [], request.images or []
        if len(texts) + len(images) > self.max_items:
            raise InvalidInput(
                "texts, images", f"at most {self.max_items} in all, got {len(texts) + len(images)}"
            )
        text_items = [_item("texts", i, text=text) for i, text in enumerate(texts)]
        image_items = [_item("images", i, img_blob=image) for i, image in enumerate(images)]
        text_vectors, image_vectors = await asyncio.gather(
            self._encode(text_items, "texts"), self._encode(image_items, "images")
        )
        return VectorizeResult(textVectors=text_vectors, imageVectors=image_vectors)

    async def _encode(self, items: list[Item], field: str) -> list[list[float]]:
        if not items:
            return []
        return l2_normalize(await self.items.encode_items(items, field)).tolist()


def _parse(body: bytes) -> VectorizeRequest:
    try:
        return VectorizeRequest.model_validate(json.loads(body))
    except ValidationError as exc:  # each error names its field: texts[2], images
        raise InvalidInput("", validation_message(exc.errors())) from None
    except ValueError as exc:  # not JSON
        raise InvalidInput("body", f"invalid JSON ({exc})") from None


def _item(field: str, index: int, **value: str) -> Item:
    try:
        return Item(**value)
    except ValidationError as exc:  # the item's own limits: empty, too long
        raise InvalidInput(f"{field}[{index}]", exc.errors()[0]["msg"]) from None
