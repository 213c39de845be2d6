"""The entry service: every HTTP route, declared here; model work goes to the model services.

A route reads top to bottom: what its body is (``@takes``: raw image bytes, a form rewritten
into its JSON, ...; the request reader does it), its guard (``@guard``: deadline, in-flight
limit, errors as answers), then a few lines calling the entry's side of the work
(``clip_service.server``), which calls ``ClipEncoder`` and ``BlipCaptioner`` (``runners/``).
Routes BentoML's API decorator cannot express (GET, caller-named form fields, static files)
are a FastAPI app, so they are in the OpenAPI document too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import bentoml
import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from clip_service.errors import InvalidInput, NotFound, NotServed, error_body, validation_message
from clip_service.interrogation.custom_tables import CustomTableLimits, CustomTableStatus
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.models.ranking import rank
from clip_service.process.disconnect import CancelOnDisconnect
from clip_service.process.drain import Drain
from clip_service.process.request_ids import HEADERS as REQUEST_ID_HEADERS
from clip_service.process.request_ids import echo_headers, request_id
from clip_service.scheduling import Admission
from clip_service.server.auth import ApiKeys, warn_if_open
from clip_service.server.classify import (
    DEFAULT_TEMPLATE,
    LABEL_SETS,
    Classifier,
    Score,
    parse_template,
)
from clip_service.server.custom_tables import RemoteCustomTables
from clip_service.server.encoding import ItemEncoder
from clip_service.server.form_embeddings import OPENAPI_BODY, embed_form
from clip_service.server.forms import declared_bodies, takes
from clip_service.server.guard import RouteGuard
from clip_service.server.interrogation import CustomRankings, Interrogated, InterrogationPipeline
from clip_service.server.jobs import JobRegistry, JobStatus
from clip_service.server.limits import check_classify_chars, check_rank_pairs, check_url_items
from clip_service.server.middleware import AccessControl, RequestReader, ResponseShaper
from clip_service.server.openai_embeddings import (
    EmbeddingInput,
    EmbeddingsResult,
    EncodingFormat,
    Modality,
    OpenAIEmbeddings,
)
from clip_service.server.schemas import (
    AnalyzeResult,
    BatchSettings,
    CaptionResult,
    ClassifyResult,
    ClassScore,
    ImageItem,
    InterrogateResult,
    InterrogationInfo,
    Items,
    LabelScore,
    RankResult,
    ServedModel,
    Tag,
    TagResult,
    Text,
    TextResult,
    VectorResult,
    WearableResult,
)
from clip_service.server.upstream import Guarded, dependencies_ready
from clip_service.server.weaviate import WeaviateVectorizer, is_vectorize_request
from clip_service.settings import get_settings
from runners.blip_captioner import BlipCaptioner
from runners.clip_encoder import ClipEncoder

settings = get_settings()
warn_if_open(bool(settings.api_key_list))

guard = RouteGuard(settings.request_timeout_s, settings.max_concurrency)
MAX_FLAVORS = settings.max_flavors
MAX_LABELS = 1000
MAX_EXTRA_TABLES = 8
Answer = TypeVar("Answer")
ExtraTables = Annotated[
    list[str],
    Field(max_length=MAX_EXTRA_TABLES, description="custom label tables to rank the image in"),
]

# The routes BentoML's API decorator cannot express; their bodies are the functions below.
http = FastAPI(title="clip-service", openapi_url=None, docs_url=None, redoc_url=None)


@bentoml.asgi_app(http)
@bentoml.service(
    name="ClipApi",
    # BentoML's own timeout only backs up the routes' guard, which answers 504 in the
    # project's shape first.
    traffic={"timeout": settings.request_timeout_s + 5},
    workers=settings.entry_worker_count,
)
class ClipApi:
    # Each model service runs beside this one unless its URL is set (split deployment);
    # CAPTION_MODEL=none serves CLIP alone: no captioner is started.
    encoder = bentoml.depends(ClipEncoder, url=settings.clip_encoder_url)
    if settings.interrogation:
        captioner = bentoml.depends(BlipCaptioner, url=settings.captioner_url)

    def __init__(self) -> None:
        # Decoding and preprocessing run many requests at once in threads: one torch thread
        # each, or they fight the model (on the same cores) for every core; 2-30x slower
        # when they did. Here, not at import: the model services import this module too.
        torch.set_num_threads(1)
        encoder = Guarded(self.encoder.to_async, "ClipEncoder")
        self.items = ItemEncoder(encoder, settings)
        limits = CustomTableLimits(
            settings.max_custom_tables, settings.max_custom_table_labels, settings.max_text_chars
        )
        self.custom_tables = RemoteCustomTables(encoder, limits)
        self.interrogation = None
        if settings.interrogation:
            self.interrogation = InterrogationPipeline(
                self.items,
                encoder,
                Guarded(self.captioner.to_async, "BlipCaptioner"),
                self.custom_tables,
                settings.request_timeout_s,
                Admission(settings.max_interrogations, settings.max_queued_interrogations),
            )
        self.classifier = Classifier(self.items)
        self.openai = OpenAIEmbeddings(self.items)
        self.jobs = JobRegistry(
            settings.jobs_db,
            settings.max_running_jobs,
            settings.max_unfinished_jobs,
            settings.job_ttl_s,
            settings.job_timeout_s,
        )
        self.weaviate = WeaviateVectorizer(self.items, settings.max_items, settings.max_json_depth)

    @bentoml.on_startup
    def start_serving(self) -> None:
        """On SIGTERM: refuse new connections at once, finish the requests in flight. Jobs:
        renew this worker's leases and sweep lost jobs from now on."""
        Drain("entry").install()
        self.jobs.start()

    async def __is_ready__(self) -> bool:
        """/readyz: 503 at once while a model service is down, restarting or unreachable."""
        dependencies = [self.encoder]
        if settings.interrogation:
            dependencies.append(self.captioner)
        return await dependencies_ready(dependencies, settings.readiness_timeout_s)

    def _interrogating(self) -> InterrogationPipeline:
        """The interrogation pipeline; 501 when this deployment serves CLIP only."""
        if self.interrogation is None:
            raise NotServed(
                "interrogation is off: this server runs CLIP only (CAPTION_MODEL=none); "
                "set CAPTION_MODEL (e.g. blip-base) to serve /caption, /interrogate, "
                "/analyze and /extract_text"
            )
        return self.interrogation

    @bentoml.api(route="/encode")
    @takes("items")
    @guard
    async def encode(self, items: Items, /) -> list[list[float]]:
        """Texts and images to CLIP embeddings (raw model outputs), in input order."""
        check_url_items(items, "items", settings.max_url_items)
        return (await self.items.encode_items(items, "items")).tolist()

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
        return await self.openai.create(input, encoding_format, dimensions, modality)

    @bentoml.api(route="/rank")
    @takes("rank")
    @guard
    async def rank(self, queries: Items, candidates: Items) -> RankResult:
        """Each query against all candidates: softmax probabilities and cosines."""
        check_rank_pairs(len(queries), len(candidates), settings.max_rank_pairs)
        check_url_items([*queries, *candidates], "queries, candidates", settings.max_url_items)
        query_vectors = await self.items.encode_items(queries, "queries")
        candidate_vectors = await self.items.encode_items(candidates, "candidates")
        info = await self.items.model_info()
        probabilities, cosines = rank(query_vectors, candidate_vectors, info.logit_scale)
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
            return JSONResponse((await self.weaviate.vectorize(body)).model_dump())
        vector = await self.items.encode_image(body, "body")
        return VectorResult(vector=vector.tolist())

    @bentoml.api(route="/caption")
    @takes("image")
    @guard
    async def caption(self, image: ImageItem) -> CaptionResult:
        """The BLIP caption of an image."""
        interrogation = self._interrogating()
        pixels = await interrogation.pixels(*await self.items.image_bytes(image, "image"))
        return CaptionResult(caption=await interrogation.caption(pixels))

    @bentoml.api(route="/interrogate")
    @takes("image")
    @guard
    async def interrogate(
        self,
        image: ImageItem,
        mode: Mode = Mode.BEST,
        caption: Text | None = None,
        min_flavors: Annotated[int, Field(ge=0, le=MAX_FLAVORS)] = 8,
        max_flavors: Annotated[int, Field(ge=1, le=MAX_FLAVORS)] | None = None,
        label_tables: ExtraTables | None = None,
    ) -> InterrogateResult:
        """A text prompt for the image, as clip-interrogator 0.6.0 makes it.

        ``max_flavors`` defaults to the library's per mode (classic 3, others 32);
        ``min_flavors`` only matters in best mode, as in the library; a given ``caption`` is
        used instead of generating one. Custom ``label_tables`` are ranked beside it (their
        top 5 terms each, the prompt unchanged), as the library's ``LabelTable`` is.
        """
        request = _prompt_request(mode, caption, min_flavors, max_flavors, label_tables)
        return await (await self._interrogation(image, request))(None)

    @bentoml.api(route="/jobs/interrogate")
    @takes("image")
    @guard
    async def submit_interrogation(
        self,
        image: ImageItem,
        mode: Mode = Mode.BEST,
        caption: Text | None = None,
        min_flavors: Annotated[int, Field(ge=0, le=MAX_FLAVORS)] = 8,
        max_flavors: Annotated[int, Field(ge=1, le=MAX_FLAVORS)] | None = None,
        label_tables: ExtraTables | None = None,
    ) -> JobStatus:
        """``/interrogate`` as a job: answered 202 at once with the job's id (input errors
        are still a 400 here); poll ``GET /jobs/{id}``, fetch ``GET /jobs/{id}/result``."""
        request = _prompt_request(mode, caption, min_flavors, max_flavors, label_tables)
        return _accepted(self.jobs.submit("interrogate", await self._interrogation(image, request)))

    async def _interrogation(
        self, image: ImageItem, request: PromptRequest
    ) -> Callable[[str | None], Awaitable[InterrogateResult]]:
        """The interrogation of an image, to run now or as a job (see :meth:`_prompt`)."""

        def answer(made: Interrogated) -> InterrogateResult:
            scores = _label_scores(made.label_tables)
            return InterrogateResult(
                prompt=made.prompt, caption=made.caption, mode=request.mode, label_tables=scores
            )

        return await self._prompt(*await self.items.image_bytes(image, "image"), request, answer)

    async def _prompt(
        self,
        data: bytes,
        field: str,
        request: PromptRequest,
        answer: Callable[[Interrogated], Answer],
    ) -> Callable[[str | None], Awaitable[Answer]]:
        """The prompt search for an image, as work to run now or as a job (reporting its
        chain step under the job's key). Input is checked and decoded now (bad input is a 400
        at once), and only the models' input pixels are kept."""
        interrogation = self._interrogating()
        pixels = await interrogation.prepare(data, field, request)

        async def work(progress_key: str | None) -> Answer:
            return answer(await interrogation.interrogate(pixels, request, progress_key))

        return work

    @bentoml.api(route="/analyze")
    @takes("image")
    @guard
    async def analyze(
        self,
        image: ImageItem,
        top_k: Annotated[int, Field(ge=1, le=100)] = 5,
        label_tables: ExtraTables | None = None,
    ) -> AnalyzeResult:
        """The top-k labels of each label table (and of the custom ``label_tables``), with
        their cosine similarity to the image."""
        interrogation = self._interrogating()
        data, field = await self.items.image_bytes(image, "image")
        pixels = await interrogation.pixels(data, field, caption=False)
        tables, custom = await interrogation.analyze(pixels, top_k, label_tables or ())
        return AnalyzeResult(
            **{
                name: [{"label": label, "score": score} for label, score in ranked]
                for name, ranked in tables.items()
            },
            label_tables=_label_scores(custom),
        )

    @bentoml.api(route="/extract_text")
    @takes("raw")
    @guard
    async def extract_text(self, image: bytes, /) -> TextResult:
        """Raw image bytes in the body -> its best-mode prompt."""
        return await (await self._text_extraction(image))(None)

    @bentoml.api(route="/jobs/extract_text")
    @takes("raw")
    @guard
    async def submit_text_extraction(self, image: bytes, /) -> JobStatus:
        """``/extract_text`` as a job (see ``/jobs/interrogate``)."""
        return _accepted(self.jobs.submit("extract_text", await self._text_extraction(image)))

    async def _text_extraction(self, image: bytes) -> Callable[[str | None], Awaitable[TextResult]]:
        return await self._prompt(
            image, "body", PromptRequest(), lambda made: TextResult(text=made.prompt)
        )

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
            check_classify_chars(labels, template, settings.max_classify_chars)
        vector = await self.items.encode_image(*await self.items.image_bytes(image, "image"))
        if custom:
            ranked = await self.custom_tables.rank(vector, [label_set], top_k, "label_set")
            scores = [ClassScore(**t.model_dump(), group=label_set) for t in ranked[label_set]]
            return ClassifyResult(scores=scores)
        scores = await self.classifier.classify(vector, labels, label_set, parsed, top_k)
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
        vector = await self.items.encode_image(file.read_bytes(), "file")
        return rid, await self.classifier.classify(vector, label_set=label_set, top_k=top_k)


@http.get("/model", response_model=ServedModel)
@guard
async def served_model() -> ServedModel:
    """Which model is served, where, how requests are batched, and whether interrogation
    is served (its caption model and how far its label tables are)."""
    service: ClipApi = bentoml.get_current_service()
    info = await service.items.model_info()
    interrogation = None
    if service.interrogation is not None:
        tables = await service.interrogation.tables()
        interrogation = InterrogationInfo(caption_model=settings.caption_model, label_tables=tables)
    batching = BatchSettings(
        image_max_batch_size=settings.image_max_batch_size,
        text_max_batch_size=settings.text_max_batch_size,
        bulk_slice_ms=settings.bulk_slice_ms,
        max_latency_ms=settings.max_latency_ms,
    )
    return ServedModel(
        **info.model_dump(exclude={"preprocess"}), batching=batching, interrogation=interrogation
    )


@http.post(
    "/embeddings",
    openapi_extra=OPENAPI_BODY,
    responses={400: {"description": 'bad input: {"error": "<field>: <problem>"}'}},
)
@guard
async def form_embeddings(request: Request) -> JSONResponse:
    """A multipart form: every field (a file or a text, named by you) -> its vector under its
    name, plus ``texts_vectors`` and ``images_vectors`` in field order, and the request id
    (the ``request_id`` header, echoed, else a new one)."""
    service: ClipApi = bentoml.get_current_service()
    rid = request_id(request.headers)
    body = await embed_form(request, service.items, settings.max_items, settings.max_text_chars)
    return JSONResponse({"request_id": rid, **body}, headers=echo_headers(rid))


def _prompt_request(
    mode: Mode,
    caption: str | None,
    min_flavors: int,
    max_flavors: int | None,
    label_tables: list[str] | None,
) -> PromptRequest:
    """The interrogation a body of ``/interrogate`` or ``/jobs/interrogate`` asks for."""
    return PromptRequest(
        mode=mode,
        caption=caption,
        min_flavors=min_flavors,
        max_flavors=max_flavors,
        label_tables=tuple(label_tables or ()),
    )


def _label_scores(ranked: CustomRankings | None) -> dict[str, list[LabelScore]] | None:
    """Custom tables' top terms as the interrogation routes answer labels: with cosines."""
    if ranked is None:
        return None
    return {
        name: [LabelScore(label=t.label, score=t.cosine) for t in terms]
        for name, terms in ranked.items()
    }


def _accepted(job: JobStatus) -> JSONResponse:
    """202 with the job's status and where to poll it."""
    headers = {"Location": f"/jobs/{job.id}"}
    return JSONResponse(job.model_dump(), status_code=202, headers=headers)


NO_JOB = {404: {"description": "no such job (or finished over JOB_TTL_S ago)"}}


@http.get("/jobs/{job_id}", response_model=JobStatus, tags=["Jobs"], responses=NO_JOB)
@guard
async def job_status(job_id: str) -> JobStatus:
    """A job's state (queued, running, succeeded, failed, cancelled) and, while a best-mode
    chain runs, its step."""
    service: ClipApi = bentoml.get_current_service()
    return await service.jobs.status(job_id, service._interrogating().chain_step)


@http.get(
    "/jobs/{job_id}/result",
    tags=["Jobs"],
    responses={**NO_JOB, 409: {"description": "not done, or failed or cancelled"}},
)
@guard
async def job_result(job_id: str) -> JSONResponse:
    """A finished job's answer, as its route would have given it; 409 until it is done."""
    return JSONResponse(bentoml.get_current_service().jobs.result(job_id))


@http.delete("/jobs/{job_id}", response_model=JobStatus, tags=["Jobs"], responses=NO_JOB)
@guard
async def cancel_job(job_id: str) -> JobStatus:
    """Cancel a queued or running job; a finished one is left as it is."""
    return bentoml.get_current_service().jobs.cancel(job_id)


class CustomTableBody(BaseModel):
    name: str = Field(description="1-64 of a-z, 0-9, _ and -")
    labels: list[str] = Field(description="the terms, one per item")


@http.post(
    "/label-tables",
    response_model=CustomTableStatus,
    status_code=202,
    tags=["Label tables"],
    responses={200: {"description": "ready already"}, 400: {"description": "a bad list"}},
)
@guard
async def put_label_table(table: CustomTableBody) -> JSONResponse:
    """Store a custom label table (replacing one of that name) and embed its terms once,
    in the background (202 until ready); cached by model and list."""
    status = await bentoml.get_current_service().custom_tables.put(table.name, table.labels)
    code = 200 if status.state == "ready" else 202
    return JSONResponse(status.model_dump(), status_code=code)


@http.exception_handler(HTTPException)
async def unreadable_body(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors in the project's shape; a body it cannot parse is the body's."""
    message = f"body: {exc.detail}" if exc.status_code == 400 else str(exc.detail)
    return JSONResponse(error_body(message), exc.status_code, headers=exc.headers)


@http.exception_handler(RequestValidationError)
async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The app's routes answer bad bodies as every route does: a 400 naming the fields."""
    errors = [
        {**e, "loc": e["loc"][1:] if e["loc"][:1] == ("body",) else e["loc"]} for e in exc.errors()
    ]
    return JSONResponse(error_body(validation_message(errors)), status_code=400)


@http.get("/label-tables", response_model=list[CustomTableStatus], tags=["Label tables"])
@guard
async def label_tables() -> list[CustomTableStatus]:
    """The custom label tables (``POST /label-tables``, or files in ``CUSTOM_TABLES_DIR``)
    and whether each is ready."""
    return await bentoml.get_current_service().custom_tables.all()


@http.delete(
    "/label-tables/{name}",
    status_code=204,
    tags=["Label tables"],
    responses={404: {"description": "no such table"}},
)
@guard
async def delete_label_table(name: str) -> Response:
    """Remove a custom label table (its cached embeddings stay, keyed by its terms)."""
    if not await bentoml.get_current_service().custom_tables.delete(name):
        raise NotFound(f"name: no custom label table {name!r}")
    return Response(status_code=204)


@http.get("/meta", tags=["Weaviate"])
@guard
async def weaviate_meta() -> dict:
    """Weaviate's ``multi2vec-clip`` meta call: the served model."""
    info = await bentoml.get_current_service().items.model_info()
    return {"model": info.spec, "backend": info.backend, "dimensions": info.embedding_size}


@http.get("/.well-known/live", status_code=204, tags=["Weaviate"])
async def weaviate_live() -> Response:
    """Weaviate's liveness probe: the process answers."""
    return Response(status_code=204)


@http.get("/.well-known/ready", status_code=204, tags=["Weaviate"])
async def weaviate_ready() -> Response:
    """Weaviate's readiness probe (it waits for a 2xx within 500 ms): 204 when the model
    services answer, as ``/readyz``."""
    service: ClipApi = bentoml.get_current_service()
    ready = await service.__is_ready__()
    return Response(status_code=204 if ready else 503)


@http.get("/ui", include_in_schema=False)
async def demo_page() -> RedirectResponse:
    """/ui -> /ui/, relative, so the page's relative asset and API URLs resolve under any
    prefix a proxy puts in front of the service."""
    return RedirectResponse("ui/", status_code=308)


http.mount("/ui", StaticFiles(packages=[("clip_service", "ui")], html=True), name="ui")

# Outermost first (BentoML adds them in this order, each wrapping the next).
ClipApi.add_asgi_middleware(CancelOnDisconnect)
ClipApi.add_asgi_middleware(ResponseShaper)
ClipApi.add_asgi_middleware(
    AccessControl,
    origins=settings.cors_origins,
    keys=(
        ApiKeys(settings.api_key_list, settings.public_metrics, settings.public_docs)
        if settings.api_key_list
        else None
    ),
    expose=[*REQUEST_ID_HEADERS, "retry-after", "www-authenticate"],
)
ClipApi.add_asgi_middleware(
    RequestReader,
    bodies=declared_bodies(ClipApi.apis.values()),
    max_bytes=settings.max_body_bytes,
    read_timeout_s=settings.body_read_timeout_s,
    max_json_depth=settings.max_json_depth,
)
