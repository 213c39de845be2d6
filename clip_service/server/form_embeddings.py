"""``POST /embeddings``: a multipart form whose every field (a file or a text), named by the
caller, gets its vector under its own name, as the service this bundle replaces answered."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from clip_service.errors import InvalidInput
from clip_service.server.encoding import ItemEncoder
from clip_service.server.forms import EMPTY_NAME, read_form

RESERVED_FIELDS = frozenset({"request_id", "texts_vectors", "images_vectors"})
# Declared in the OpenAPI document: any field names, each a file or a text.
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": {
                        "oneOf": [{"type": "string", "format": "binary"}, {"type": "string"}]
                    },
                    "description": "fields named by the caller: image files and texts",
                }
            }
        },
    }
}


async def embed_form(
    request: Request, items: ItemEncoder, max_items: int, max_text_chars: int
) -> dict[str, Any]:
    """Each field's vector under its name, plus ``texts_vectors`` and ``images_vectors`` in
    field order."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("body", "expected a multipart/form-data form")
    form = await read_form(request, max_files=max_items, max_fields=max_items)
    fields = list(form.multi_items())
    if not fields:
        raise InvalidInput("body", "the form has no fields")
    texts, images = {}, {}
    for name, value in fields:
        if not name:
            raise InvalidInput("body", EMPTY_NAME)
        if name in RESERVED_FIELDS or name in texts or name in images:
            raise InvalidInput(name, "field name is reserved or repeated")
        if isinstance(value, UploadFile):
            # Each file becomes the model's input pixels as it is read: no decoded image
            # is kept while the others decode.
            images[name] = await items.pixels(await value.read(), name)
        elif not value or len(value) > max_text_chars:
            raise InvalidInput(name, f"text must be 1 to {max_text_chars} characters")
        else:
            texts[name] = value
    text_vectors = await items.encoder.encode_texts(list(texts.values())) if texts else []
    image_vectors = await items.encode_pixels(list(images.values())) if images else []
    by_name = dict(zip(texts, _lists(text_vectors), strict=True))
    by_name |= dict(zip(images, _lists(image_vectors), strict=True))
    return {
        **by_name,
        "texts_vectors": _lists(text_vectors),
        "images_vectors": _lists(image_vectors),
    }


def _lists(vectors: np.ndarray | list) -> list[list[float]]:
    return np.asarray(vectors, dtype=float).tolist()
