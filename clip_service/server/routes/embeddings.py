"""Texts and images to CLIP embeddings: ``/encode``, ``/v1/embeddings`` (OpenAI's API),
``/rank``, ``/vectorize`` (raw bytes, and Weaviate's ``multi2vec-clip``) and the
caller-named multipart form of ``/embeddings``."""

from __future__ import annotations

from typing import Annotated

import bentoml
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.requests import Request

from clip_service.models.ranking import rank
from clip_service.process.request_ids import echo_headers, request_id
from clip_service.server.entry import Entry
from clip_service.server.form_embeddings import OPENAPI_BODY, embed_form
from clip_service.server.forms import takes
from clip_service.server.limits import check_rank_pairs, check_url_items
from clip_service.server.openai_embeddings import (
    EmbeddingInput,
    EmbeddingsResult,
    EncodingFormat,
    Modality,
)
from clip_service.server.routes.common import EntryDep, guard
from clip_service.server.schemas import Items, RankResult, VectorResult
from clip_service.server.weaviate import is_vectorize_request


class EmbeddingRoutes:
    entry: Entry

    @bentoml.api(route="/encode")
    @takes("items")
    @guard
    async def encode(self, items: Items, /) -> list[list[float]]:
        """Texts and images to CLIP embeddings (raw model outputs), in input order."""
        check_url_items(items, "items", self.entry.settings.max_url_items)
        return (await self.entry.items.encode_items(items, "items")).tolist()

    @bentoml.api(route="/v1/embeddings")
    @takes("json")
    @guard
    async def openai_embeddings(
        self,
        input: EmbeddingInput,
        model: str | None = None,
        encoding_format: EncodingFormat = "float",
        dimensions: Annotated[int, Field(ge=1)] | None = None,
        user: str | None = None,
        modality: Modality | None = None,
    ) -> EmbeddingsResult:
        """OpenAI's embeddings API (clients use base URL ``{server}/v1``), texts and images.

        ``model`` and ``user`` are accepted and ignored (the answer names the served model);
        ``modality`` (infinity-emb's extension) is ``text`` or ``image`` for every input;
        without it, ``data:image/`` URIs are images and other strings texts.
        """
        return await self.entry.openai.create(input, encoding_format, dimensions, modality)

    @bentoml.api(route="/rank")
    @takes("rank")
    @guard
    async def rank(self, queries: Items, candidates: Items) -> RankResult:
        """Each query against all candidates: probabilities (by the model's rule, see
        ``scoring`` in ``GET /model``) and cosines."""
        items, settings = self.entry.items, self.entry.settings
        check_rank_pairs(len(queries), len(candidates), settings.max_rank_pairs)
        check_url_items([*queries, *candidates], "queries, candidates", settings.max_url_items)
        query_vectors = await items.encode_items(queries, "queries")
        candidate_vectors = await items.encode_items(candidates, "candidates")
        info = await items.model_info()
        probabilities, cosines = rank(query_vectors, candidate_vectors, info.scorer())
        return RankResult(
            probabilities=probabilities.tolist(), cosine_similarities=cosines.tolist()
        )

    @bentoml.api(route="/vectorize")
    @takes("raw")
    @guard
    async def vectorize(self, body: bytes, /) -> VectorResult:
        """Raw image bytes in the body (any Content-Type) -> its embedding.

        A JSON object body is Weaviate's ``multi2vec-clip`` request, ``{"texts": [...],
        "images": [base64, ...]}``, answered ``{"textVectors", "imageVectors"}``
        (L2-normalised; docs/api.md, "Weaviate")."""
        if is_vectorize_request(body):
            return JSONResponse((await self.entry.weaviate.vectorize(body)).model_dump())
        vector = await self.entry.items.encode_image(body, "body")
        return VectorResult(vector=vector.tolist())


router = APIRouter()


@router.post(
    "/embeddings",
    openapi_extra=OPENAPI_BODY,
    responses={400: {"description": 'bad input: {"error": "<field>: <problem>"}'}},
)
@guard
async def form_embeddings(request: Request, entry: EntryDep) -> JSONResponse:
    """A multipart form: every field (a file or a text, named by you) -> its vector under its
    name, plus ``texts_vectors`` and ``images_vectors`` in field order, and the request id
    (the ``request_id`` header, echoed, else a new one)."""
    rid = request_id(request.headers)
    limits = entry.settings
    body = await embed_form(request, entry.items, limits.max_items, limits.max_text_chars)
    return JSONResponse({"request_id": rid, **body}, headers=echo_headers(rid))
