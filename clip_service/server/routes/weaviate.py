"""Weaviate's ``multi2vec-clip`` module: its meta call and probes (its ``/vectorize`` is
the embeddings route's, :mod:`.embeddings`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from clip_service.server.routes.common import EntryDep, guard

router = APIRouter(tags=["Weaviate"])


@router.get("/meta")
@guard
async def weaviate_meta(entry: EntryDep) -> dict:
    """Weaviate's ``multi2vec-clip`` meta call: the served model."""
    info = await entry.items.model_info()
    return {"model": info.spec, "backend": info.backend, "dimensions": info.embedding_size}


@router.get("/.well-known/live", status_code=204)
async def weaviate_live() -> Response:
    """Weaviate's liveness probe: the process answers."""
    return Response(status_code=204)


@router.get("/.well-known/ready", status_code=204)
async def weaviate_ready(entry: EntryDep) -> Response:
    """Weaviate's readiness probe (it waits for a 2xx within 500 ms): 204 when the model
    services answer, as ``/readyz``."""
    return Response(status_code=204 if await entry.ready() else 503)
