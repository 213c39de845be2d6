"""The entry service: HTTP routes only. Model work goes to the batched model services."""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from clip_service.encoding import ItemEncoder
from clip_service.middleware import BodyGuard, ErrorShape
from clip_service.ranking import rank
from clip_service.schemas import BatchSettings, Items, RankResult, VectorResult
from clip_service.settings import get_settings
from runners.clip_encoder import ClipEncoder

settings = get_settings()

# Routes whose body is the raw image, whatever Content-Type the client declares.
RAW_BODY_ROUTES = ("/vectorize",)


async def model_route(request: Request) -> JSONResponse:
    """GET /model: which model is served, where, and how requests are batched."""
    service: ClipApi = bentoml.get_current_service()
    info = await service.items.model_info()
    batching = BatchSettings(
        image_max_batch_size=settings.image_max_batch_size,
        text_max_batch_size=settings.text_max_batch_size,
        max_latency_ms=settings.max_latency_ms,
    )
    return JSONResponse(
        {**info.model_dump(exclude={"preprocess"}), "batching": batching.model_dump()}
    )


@bentoml.asgi_app(Starlette(routes=[Route("/model", model_route, methods=["GET"])]))
@bentoml.service(
    name="ClipApi",
    traffic={"timeout": settings.max_latency_ms / 1000 + 120},
)
class ClipApi:
    encoder = bentoml.depends(ClipEncoder)

    def __init__(self) -> None:
        self.items = ItemEncoder(self.encoder.to_async, settings)

    @bentoml.api(route="/encode")
    async def encode(self, items: Items, /) -> list[list[float]]:
        """Texts and images to CLIP embeddings (raw model outputs), in input order."""
        return (await self.items.encode_items(items, "items")).tolist()

    @bentoml.api(route="/rank")
    async def rank(self, queries: Items, candidates: Items) -> RankResult:
        """Each query against all candidates: softmax probabilities and cosines."""
        query_vectors = await self.items.encode_items(queries, "queries")
        candidate_vectors = await self.items.encode_items(candidates, "candidates")
        info = await self.items.model_info()
        probabilities, cosines = rank(query_vectors, candidate_vectors, info.logit_scale)
        return RankResult(
            probabilities=probabilities.tolist(), cosine_similarities=cosines.tolist()
        )

    @bentoml.api(route="/vectorize")
    async def vectorize(self, image: bytes, /) -> VectorResult:
        """Raw image bytes in the body (any Content-Type) -> its embedding."""
        pixels = await self.items.pixels(await self.items.decode(image, "body"))
        vectors = await self.items.encode_pixels([pixels])
        return VectorResult(vector=vectors[0].tolist())


ClipApi.add_asgi_middleware(ErrorShape)
ClipApi.add_asgi_middleware(
    BodyGuard, max_bytes=settings.max_body_bytes, raw_body_routes=RAW_BODY_ROUTES
)
