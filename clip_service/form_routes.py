"""Routes that BentoML's API decorator cannot express, as a mounted Starlette app:
``GET /model``, ``POST /embeddings`` (a multipart form with caller-named fields) and the
demo page ``GET /ui`` (static files shipped in the package, ``clip_service/ui``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .errors import InvalidInput, error_body
from .multipart import EMPTY_NAME, read_form
from .request_ids import echo_headers, request_id
from .schemas import BatchSettings
from .settings import get_settings

if TYPE_CHECKING:
    from service import ClipApi

RESERVED_FIELDS = frozenset({"request_id", "texts_vectors", "images_vectors"})


async def model_info(request: Request) -> JSONResponse:
    """GET /model: which model is served, where, how requests are batched, and whether
    interrogation is served (its caption model and how far its label tables are)."""
    service: ClipApi = bentoml.get_current_service()
    settings = get_settings()
    info = await service.items.model_info()
    batching = BatchSettings(
        image_max_batch_size=settings.image_max_batch_size,
        text_max_batch_size=settings.text_max_batch_size,
        bulk_slice_ms=settings.bulk_slice_ms,
        max_latency_ms=settings.max_latency_ms,
    )
    interrogation = None
    if service.interrogation is not None:
        tables = await service.interrogation.tables()
        interrogation = {
            "caption_model": settings.caption_model,
            "label_tables": {**tables.model_dump(), "progress": tables.progress},
        }
    return JSONResponse(
        {
            **info.model_dump(exclude={"preprocess"}),
            "batching": batching.model_dump(),
            "interrogation": interrogation,
        }
    )


async def embeddings(request: Request) -> JSONResponse:
    """POST /embeddings: every form field (file or text) -> its vector, under its name.

    Also ``texts_vectors`` and ``images_vectors`` in field order, and the request id,
    which is echoed in the response headers too.
    """
    try:
        rid = request_id(request.headers)
        body = await _embed_form(request)
    except InvalidInput as exc:
        return JSONResponse(error_body(str(exc)), status_code=exc.error_code)
    return JSONResponse({"request_id": rid, **body}, headers=echo_headers(rid))


async def _embed_form(request: Request) -> dict:
    service: ClipApi = bentoml.get_current_service()
    settings = get_settings()
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("body", "expected a multipart/form-data form")
    form = await read_form(request, max_files=settings.max_items, max_fields=settings.max_items)
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
            images[name] = await service.items.decode(await value.read(), name)
        elif not value or len(value) > settings.max_text_chars:
            raise InvalidInput(name, f"text must be 1 to {settings.max_text_chars} characters")
        else:
            texts[name] = value
    text_vectors = await service.items.encoder.encode_texts(list(texts.values())) if texts else []
    image_vectors = (
        await service.items.encode_pixels([await service.items.pixels(i) for i in images.values()])
        if images
        else []
    )
    by_name = dict(zip(texts, _lists(text_vectors), strict=True))
    by_name |= dict(zip(images, _lists(image_vectors), strict=True))
    return {
        **by_name,
        "texts_vectors": _lists(text_vectors),
        "images_vectors": _lists(image_vectors),
    }


async def ui_redirect(request: Request) -> RedirectResponse:
    """GET /ui -> /ui/, relative, so the page's relative asset and API URLs resolve
    under any prefix a proxy puts in front of the service."""
    return RedirectResponse("ui/", status_code=308)


def _lists(vectors: np.ndarray | list) -> list[list[float]]:
    return np.asarray(vectors, dtype=float).tolist()


app = Starlette(
    routes=[
        Route("/model", model_info, methods=["GET"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/ui", ui_redirect, methods=["GET", "HEAD"]),
        Mount("/ui", StaticFiles(packages=[("clip_service", "ui")], html=True), name="ui"),
    ]
)
