"""Where `caption-dir` sends images: a running server, or the models in this process."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import httpx
import numpy as np

from clip_service.cli.bulk_encode import BulkEncodeError
from clip_service.cli.caption_dir import Result, Skip
from clip_service.engines.caption_engine import CaptionEngine
from clip_service.engines.clip_engine import ClipEngine, EngineLimits
from clip_service.errors import InvalidInput
from clip_service.inputs.images import decode_image
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.models.captioning import Captioner, GenerationSettings
from clip_service.models.factory import load_configured_clip_model
from clip_service.models.preprocess import build_preprocessor
from clip_service.settings import Settings

CAPTION = "caption"  # --mode for /caption; the others are interrogation's modes
MODES = (CAPTION, *(mode.value for mode in Mode))
# A busy server (429) or one still making its label tables (503) says when to come back;
# those waits are bounded so that a server that never recovers ends the run.
MAX_RETRIES, MAX_RETRY_WAIT_S = 30, 60.0


class ServerTarget:
    """``POST /caption`` or ``/interrogate`` of a running server, the image as base64."""

    def __init__(
        self,
        url: str,
        mode: str,
        *,
        api_key: str | None = None,
        detail: str | None = None,
        timeout_s: float = 600,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.route = "/caption" if mode == CAPTION else "/interrogate"
        self.options: dict[str, Any] = {} if mode == CAPTION else {"mode": mode}
        self.detail = detail
        if detail is not None:
            self.options["caption_detail"] = detail  # the captioner's levels (Florence-2)

    async def check(self) -> None:
        """The server answers, takes the key and serves a captioner, before any image goes."""
        served = (await self._call("GET", "/model")).json().get("interrogation")
        if served is None:
            raise BulkEncodeError(
                f"{self.client.base_url} serves no captioner (CAPTION_MODEL=none): "
                "nothing to caption with"
            )
        # Else every image would be refused alike, one 400 at a time.
        offered = served.get("captioner", {}).get("caption_details")
        if self.detail is not None and offered is not None and self.detail not in offered:
            raise BulkEncodeError(
                f"--detail {self.detail!r}: the served captioner ({served['caption_model']}) "
                f"offers {', '.join(map(repr, offered)) or 'no levels'}"
            )

    async def describe(self, data: bytes) -> Result:
        body = {"image": {"img_blob": base64.b64encode(data).decode()}, **self.options}
        answer = (await self._call("POST", self.route, json=body)).json()
        return Result(caption=answer["caption"], prompt=answer.get("prompt"))

    async def _call(self, method: str, route: str, **kwargs: Any) -> httpx.Response:
        for _ in range(MAX_RETRIES):
            try:
                response = await self.client.request(method, route, **kwargs)
            except httpx.HTTPError as exc:
                raise BulkEncodeError(f"cannot reach {self.client.base_url}: {exc}") from None
            if response.status_code not in (429, 503):
                break
            await asyncio.sleep(_retry_after(response))
        if response.status_code in (400, 413):  # this image; the others may be fine
            raise Skip(_error(response))
        if response.status_code != 200:
            raise BulkEncodeError(f"{route}: the server answered {response.status_code}: "
                                  f"{_error(response)}")  # fmt: skip
        return response

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(response: httpx.Response) -> float:
    try:
        wait = float(response.headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return min(max(wait, 0.1), MAX_RETRY_WAIT_S) if math.isfinite(wait) else 1.0


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


class InProcess:
    """The models in this process, loaded and scheduled as the model services do it
    (:class:`CaptionEngine`, and :class:`ClipEngine` with its label tables to interrogate):
    concurrent images are batched together as on a server."""

    def __init__(self, settings: Settings, mode: str, detail: str | None = None) -> None:
        if detail is not None:
            raise BulkEncodeError("--detail is sent to a server as caption_detail: use --url")
        if not settings.interrogation:
            raise BulkEncodeError("--caption-model none: nothing to caption with")
        self.settings, self.mode = settings, mode
        generation = GenerationSettings(
            max_new_tokens=settings.caption_max_new_tokens,
            num_beams=settings.caption_num_beams,
            min_length=settings.caption_min_length,
            repetition_penalty=settings.caption_repetition_penalty,
        )
        self.captioner = Captioner.load(settings.caption_model, settings.device, generation)
        self.clip = load_configured_clip_model(settings) if mode != CAPTION else None
        self.preprocess = self.clip and build_preprocessor(self.clip.preprocess_config)
        self.captions: CaptionEngine | None = None
        self.engine: ClipEngine | None = None

    async def start(self, concurrency: int) -> None:
        """Engines live on the running event loop; the label tables (to interrogate) are
        loaded from LABEL_CACHE_DIR, or fetched or built there as the server would."""
        s = self.settings
        slice_s, wait_s = s.bulk_slice_ms / 1000, s.max_latency_ms / 1000
        self.captions = CaptionEngine(
            self.captioner, s.caption_max_batch_size, slice_s=slice_s, max_wait_s=wait_s
        )
        if self.clip is not None:
            limits = EngineLimits(
                s.image_max_batch_size, s.text_max_batch_size, slice_s, wait_s,
                max_interrogations=concurrency, max_queued_interrogations=concurrency,
            )  # fmt: skip
            self.engine = ClipEngine(self.clip, limits)
            self.engine.build_label_tables(s.label_cache_dir, s.label_tables_download)
            while (status := self.engine.tables_status()) and status.state != "ready":
                if status.state == "failed":  # the engine retries for ever; a CLI stops
                    raise BulkEncodeError(f"label tables in {s.label_cache_dir}: {status.error}")
                await asyncio.sleep(0.2)

    async def describe(self, data: bytes) -> Result:
        if self.captions is None:
            raise RuntimeError("start() the in-process target first")
        caption_pixels, clip_pixels = await asyncio.to_thread(self._pixels, data)
        caption = ""
        if caption_pixels is not None:
            caption = (await self.captions.caption(caption_pixels[None]))[0]
        if self.engine is None or clip_pixels is None:
            return Result(caption=caption)
        features = (await self.engine.encode_images(clip_pixels[None]))[0]
        # As the entry hands it on: generated (even if empty), or none in negative mode.
        given = None if caption_pixels is None else caption
        request = PromptRequest(mode=Mode(self.mode), caption=given)
        answer = await self.engine.search_prompt(features, request, wait_s=0)
        assert answer.prompt is not None  # the tables were ready before the first image
        return Result(caption=caption, prompt=answer.prompt)

    def _pixels(self, data: bytes) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Decoded with the server's checks; each model's input pixels."""
        try:
            image = decode_image(data, "image", max_pixels=self.settings.max_image_pixels)
        except InvalidInput as exc:
            raise Skip(str(exc)) from None
        clip = self.preprocess(image) if self.preprocess else None
        caption = None if self.mode == Mode.NEGATIVE else self.captioner.preprocess([image])[0]
        return caption, clip
