"""The interrogation API of the Stable Diffusion web UI, for the scripts and front ends
written against it: the clip-interrogator extension's ``POST /interrogator/prompt``,
``POST /interrogator/analyze`` and ``GET /interrogator/models``
(pharmapsychotic/clip-interrogator-ext, ``scripts/clip_interrogator_ext.py``) and
AUTOMATIC1111's ``POST /sdapi/v1/interrogate`` (``modules/api/api.py``), with their bodies
and answers. Each runs the entry's interrogation as ``/interrogate``, ``/caption`` and
``/analyze`` do (same batching, deadline, admission and answers); errors carry FastAPI's
``detail`` beside the project's ``error`` (:mod:`..middleware`), which their clients read.
"""

from __future__ import annotations

from typing import Annotated, Literal

import bentoml
from fastapi import APIRouter
from pydantic import BaseModel, Field

from clip_service.errors import NotFound
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.server.entry import Entry
from clip_service.server.forms import takes
from clip_service.server.routes.common import EntryDep, guard
from clip_service.server.sd_webui import (
    IMAGE_FIELD,
    check_model_name,
    extension_name,
    image_bytes,
)

router = APIRouter(tags=["Stable Diffusion web UI"])

# The extension's modes: the library's four and "caption", the caption alone.
WebuiMode = Literal["best", "caption", "classic", "fast", "negative"]
# The extension's analysis: its 5 top labels of each table, under its names for them.
ANALYZE_TOP_K = 5
ANALYZE_KEYS = {
    "medium": "mediums",
    "artist": "artists",
    "movement": "movements",
    "trending": "trendings",
    "flavor": "flavors",
}
# A1111's "clip" interrogation is a caption and the top label of each of its tables (its
# copies of the library's artists, flavors, mediums, movements): classic mode is that,
# with the library's tables, "by" before the artist and 3 flavors.
A1111_CLIP_MODE = "classic"
WebuiImage = Annotated[
    str | None,
    Field(description="base64, plain or as a data:image/...;base64, URL; or an http(s) URL"),
]
ClipModelName = Annotated[
    str | None,
    Field(
        description="the served model (GET /interrogator/models) or a name the operator "
        "maps to it (CLIP_MODEL_ALIASES); omitted: the served model"
    ),
]
A1111Model = Annotated[str | None, Field(description="clip (deepdanbooru is not served)")]


class WebuiPrompt(BaseModel):
    prompt: str


class WebuiAnalysis(BaseModel):
    """Each table's top 5 labels, best first, with their cosine similarity to the image."""

    medium: dict[str, float]
    artist: dict[str, float]
    movement: dict[str, float]
    trending: dict[str, float]
    flavor: dict[str, float]


class WebuiCaption(BaseModel):
    caption: str


class SdWebuiRoutes:
    entry: Entry

    @bentoml.api(route="/interrogator/prompt")
    @takes("json")
    @guard
    async def interrogator_prompt(
        self,
        image: WebuiImage = None,
        clip_model_name: ClipModelName = None,
        mode: WebuiMode = "fast",
    ) -> WebuiPrompt:
        """The clip-interrogator extension's prompt: ``/interrogate`` in ``mode`` (``fast``
        by default, as the extension's API), or the caption alone (``caption``)."""
        await self._check_webui_model(clip_model_name)
        return WebuiPrompt(prompt=await self._webui_prompt(image, mode))

    @bentoml.api(route="/interrogator/analyze")
    @takes("json")
    @guard
    async def interrogator_analyze(
        self, image: WebuiImage = None, clip_model_name: ClipModelName = None
    ) -> WebuiAnalysis:
        """The clip-interrogator extension's analysis: ``/analyze`` (top 5), as label ->
        cosine maps under the extension's table names."""
        await self._check_webui_model(clip_model_name)
        interrogation = self.entry.interrogating()
        data = await image_bytes(self.entry.items, image)
        pixels = await interrogation.pixels(data, IMAGE_FIELD, caption=False)
        tables, _ = await interrogation.analyze(pixels, ANALYZE_TOP_K)
        return WebuiAnalysis(
            **{
                key: {label: score for label, score in tables[table]}
                for key, table in ANALYZE_KEYS.items()
            }
        )

    @bentoml.api(route="/sdapi/v1/interrogate")
    @takes("json")
    @guard
    async def sdapi_interrogate(
        self,
        image: WebuiImage = None,
        model: A1111Model = "clip",
    ) -> WebuiCaption:
        """AUTOMATIC1111's interrogation: ``model`` ``clip`` is ``/interrogate`` in classic
        mode, the closest to A1111's own (its caption and top labels)."""
        if (model or "clip") != "clip":
            raise NotFound(
                f"model: {model!r} is not served here; this server interrogates with CLIP "
                "only: send model 'clip'"
            )
        return WebuiCaption(caption=await self._webui_prompt(image, A1111_CLIP_MODE))

    async def _check_webui_model(self, name: str | None) -> None:
        spec = (await self.entry.items.model_info()).spec
        aliases = self.entry.settings.clip_model_alias_list
        check_model_name(name, spec, aliases, "clip_model_name")

    async def _webui_prompt(self, image: str | None, mode: str) -> str:
        """The prompt (or, in ``caption`` mode, the caption) for a request's image, checked
        and decoded before any model work."""
        interrogation = self.entry.interrogating()
        data = await image_bytes(self.entry.items, image)
        if mode == "caption":
            return await interrogation.caption(await interrogation.pixels(data, IMAGE_FIELD))
        request = PromptRequest(mode=Mode(mode))
        pixels = await interrogation.prepare(data, IMAGE_FIELD, request)
        return (await interrogation.interrogate(pixels, request)).prompt


@router.get("/interrogator/models", response_model=list[str])
@guard
async def interrogator_models(entry: EntryDep) -> list[str]:
    """The extension's model list: the one CLIP model served, in its naming
    (``ViT-L-14/openai``); names mapped to it (``CLIP_MODEL_ALIASES``) are not listed."""
    return [extension_name((await entry.items.model_info()).spec)]
