"""Image to prompt: ``/caption``, ``/interrogate``, ``/analyze``, ``/extract_text`` and the
job forms of the two prompt routes (``/jobs/interrogate``, ``/jobs/extract_text``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import bentoml
from fastapi.responses import JSONResponse
from pydantic import Field

from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.models.captioning import CaptionDetail
from clip_service.server.entry import Entry
from clip_service.server.forms import takes
from clip_service.server.interrogation import CustomRankings, Interrogated
from clip_service.server.jobs import JobStatus
from clip_service.server.routes.common import MAX_FLAVORS, ExtraTables, guard
from clip_service.server.schemas import (
    AnalyzeResult,
    CaptionResult,
    ImageItem,
    InterrogateResult,
    LabelScore,
    Text,
    TextResult,
)

Answer = TypeVar("Answer")


class InterrogationRoutes:
    entry: Entry

    @bentoml.api(route="/caption")
    @takes("image")
    @guard
    async def caption(
        self, image: ImageItem, caption_detail: CaptionDetail | None = None
    ) -> CaptionResult:
        """The caption of an image. ``caption_detail`` (brief, detailed, more_detailed) picks
        the caption task of a captioner that has levels (Florence-2: ``<CAPTION>``,
        ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>``; GET /model lists them); default
        the briefest. A captioner without levels (BLIP, BLIP-2, GIT) answers it with a 400."""
        interrogation = self.entry.interrogating()
        await interrogation.check_caption_detail(caption_detail)
        pixels = await interrogation.pixels(*await self.entry.items.image_bytes(image, "image"))
        return CaptionResult(caption=await interrogation.caption(pixels, detail=caption_detail))

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
        caption_detail: CaptionDetail | None = None,
    ) -> InterrogateResult:
        """A text prompt for the image, as clip-interrogator 0.6.0 makes it.

        ``max_flavors`` defaults to the library's per mode (classic 3, others 32);
        ``min_flavors`` only matters in best mode, as in the library; a given ``caption`` is
        used instead of generating one. Custom ``label_tables`` are ranked beside it (their
        top 5 terms each, the prompt unchanged), as the library's ``LabelTable`` is.
        ``caption_detail`` is that of the caption made (see ``/caption``).
        """
        request = _prompt_request(
            mode, caption, min_flavors, max_flavors, label_tables, caption_detail
        )
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
        caption_detail: CaptionDetail | None = None,
    ) -> JobStatus:
        """``/interrogate`` as a job: answered 202 at once with the job's id (input errors
        are still a 400 here); poll ``GET /jobs/{id}``, fetch ``GET /jobs/{id}/result``."""
        request = _prompt_request(
            mode, caption, min_flavors, max_flavors, label_tables, caption_detail
        )
        work = await self._interrogation(image, request)
        return _accepted(await self.entry.jobs.submit("interrogate", work))

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
        interrogation = self.entry.interrogating()
        data, field = await self.entry.items.image_bytes(image, "image")
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
        work = await self._text_extraction(image)
        return _accepted(await self.entry.jobs.submit("extract_text", work))

    async def _interrogation(
        self, image: ImageItem, request: PromptRequest
    ) -> Callable[[str | None], Awaitable[InterrogateResult]]:
        """The interrogation of an image, to run now or as a job (see :meth:`_prompt`)."""

        def answer(made: Interrogated) -> InterrogateResult:
            scores = _label_scores(made.label_tables)
            return InterrogateResult(
                prompt=made.prompt, caption=made.caption, mode=request.mode, label_tables=scores
            )

        data, field = await self.entry.items.image_bytes(image, "image")
        return await self._prompt(data, field, request, answer)

    async def _text_extraction(self, image: bytes) -> Callable[[str | None], Awaitable[TextResult]]:
        return await self._prompt(
            image, "body", PromptRequest(), lambda made: TextResult(text=made.prompt)
        )

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
        interrogation = self.entry.interrogating()
        pixels = await interrogation.prepare(data, field, request)

        async def work(progress_key: str | None) -> Answer:
            return answer(await interrogation.interrogate(pixels, request, progress_key))

        return work


def _prompt_request(
    mode: Mode,
    caption: str | None,
    min_flavors: int,
    max_flavors: int | None,
    label_tables: list[str] | None,
    caption_detail: CaptionDetail | None = None,
) -> PromptRequest:
    """The interrogation a body of ``/interrogate`` or ``/jobs/interrogate`` asks for."""
    return PromptRequest(
        mode=mode,
        caption=caption,
        min_flavors=min_flavors,
        max_flavors=max_flavors,
        label_tables=tuple(label_tables or ()),
        caption_detail=caption_detail,
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
