"""The entry service: HTTP routes only. Model work goes to the batched model services."""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from clip_service.encoding import ItemEncoder
from clip_service.errors import InvalidInput
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.pipeline import InterrogationPipeline
from clip_service.middleware import BodyGuard, ErrorShape
from clip_service.ranking import rank
from clip_service.schemas import (
    AnalyzeResult,
    BatchSettings,
    CaptionResult,
    ImageItem,
    InterrogateResult,
    Items,
    RankResult,
    Text,
    TextResult,
    VectorResult,
)
from clip_service.settings import get_settings
from runners.blip_captioner import BlipCaptioner
from runners.clip_encoder import ClipEncoder

settings = get_settings()

# Routes whose body is the raw image, whatever Content-Type the client declares.
RAW_BODY_ROUTES = ("/vectorize", "/extract_text")
MAX_FLAVORS = 128


async def model_route(request: Request) -> JSONResponse:
    """GET /model: which models are served, where, and how requests are batched."""
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
    captioner = bentoml.depends(BlipCaptioner)

    def __init__(self) -> None:
        self.items = ItemEncoder(self.encoder.to_async, settings)
        self.interrogation = InterrogationPipeline(
            self.items, self.captioner.to_async, settings.label_cache_dir
        )

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

    @bentoml.api(route="/caption")
    async def caption(self, image: ImageItem) -> CaptionResult:
        """The BLIP caption of an image."""
        decoded = await self.items.load_image(image, "image")
        return CaptionResult(caption=await self.interrogation.caption(decoded))

    @bentoml.api(route="/interrogate")
    async def interrogate(
        self,
        image: ImageItem,
        mode: Mode = Mode.BEST,
        caption: Text | None = None,
        min_flavors: Annotated[int, Field(ge=0, le=MAX_FLAVORS)] = 8,
        max_flavors: Annotated[int, Field(ge=1, le=MAX_FLAVORS)] | None = None,
    ) -> InterrogateResult:
        """A text prompt for the image, as clip-interrogator 0.6.0 makes it.

        ``max_flavors`` defaults to the library's per mode (classic 3, others 32); a given
        ``caption`` is used instead of generating one.
        """
        if max_flavors is not None and min_flavors > max_flavors:
            raise InvalidInput("min_flavors", "must not exceed max_flavors")
        decoded = await self.items.load_image(image, "image")
        prompt, used_caption = await self.interrogation.interrogate(
            decoded, mode, caption, min_flavors, max_flavors
        )
        return InterrogateResult(prompt=prompt, caption=used_caption, mode=mode)

    @bentoml.api(route="/analyze")
    async def analyze(
        self, image: ImageItem, top_k: Annotated[int, Field(ge=1, le=100)] = 5
    ) -> AnalyzeResult:
        """The top-k labels of each label table, with their cosine similarity to the image."""
        decoded = await self.items.load_image(image, "image")
        tables = await self.interrogation.analyze(decoded, top_k)
        return AnalyzeResult(
            **{
                name: [{"label": label, "score": score} for label, score in ranked]
                for name, ranked in tables.items()
            }
        )

    @bentoml.api(route="/extract_text")
    async def extract_text(self, image: bytes, /) -> TextResult:
        """Raw image bytes in the body -> its best-mode prompt."""
        decoded = await self.items.decode(image, "body")
        prompt, _ = await self.interrogation.interrogate(decoded, Mode.BEST, None, 8, None)
        return TextResult(text=prompt)


ClipApi.add_asgi_middleware(ErrorShape)
ClipApi.add_asgi_middleware(
    BodyGuard, max_bytes=settings.max_body_bytes, raw_body_routes=RAW_BODY_ROUTES
)
