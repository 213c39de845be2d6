"""The entry service's side of interrogation: an image in, a prompt (or top labels) out.

Everything a request names is checked before any model work. At once (:meth:`prepare`,
also when it is submitted as a job): its custom label tables must exist, and its image is
decoded. When it runs: the label tables must be due within half its time budget (else 503,
with the build's progress and when to retry), and it is admitted (at most
``MAX_INTERROGATIONS`` at once per entry worker, ``MAX_QUEUED_INTERROGATIONS`` waiting, and
none that could not finish before its deadline: a 503 with ``Retry-After``, before its
caption is made). Then the entry asks the captioner for its caption and the encoder for its
features (at interrogation priority, concurrently), then hands both to the encoder, where
the label tables and the algorithm live (and where the same admission applies to the
interrogations of all entry workers). A failure anywhere cancels the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol

import numpy as np

from clip_service.concurrency import gather_or_cancel
from clip_service.engines.clip_engine import Analysis, ChainProgress, Interrogation
from clip_service.errors import InvalidInput, Unavailable
from clip_service.interrogation.custom_tables import RankedTerm
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.interrogation.table_build import TablesStatus
from clip_service.metrics import timed_interrogation
from clip_service.models.captioning import CaptionDetail, CaptionerInfo
from clip_service.scheduling import Admission, Overloaded, Priority
from clip_service.server import deadlines
from clip_service.server.custom_tables import RemoteCustomTables
from clip_service.server.encoding import ItemEncoder
from clip_service.server.remote import RemoteModel

# Terms of each custom label table given beside a prompt.
EXTRA_TABLE_TOP_K = 5
CustomRankings = dict[str, list[RankedTerm]]


class ImagePixels(NamedTuple):
    """An image as interrogation needs it: the inputs of both models, the image dropped."""

    clip: np.ndarray
    caption: np.ndarray | None  # None when no caption will be made (given, or negative mode)


class Interrogated(NamedTuple):
    prompt: str
    caption: str  # the caption used: "" in negative mode
    label_tables: CustomRankings | None  # the custom tables asked for


# Retry-After bounds while the tables are being made: soon enough to see progress, not so
# soon that clients poll a build that has hours to go.
MIN_RETRY_S, MAX_RETRY_S = 5, 300


class CaptionerClient(Protocol):
    """The async API of the ``BlipCaptioner`` service."""

    async def caption(
        self, pixels: np.ndarray, priority: Priority = ..., detail: CaptionDetail | None = ...
    ) -> list[str]: ...
    async def info(self) -> CaptionerInfo: ...


class InterrogatingEncoder(Protocol):
    """The interrogation API of the ``ClipEncoder`` service (called with keywords, as
    BentoML's clients take them)."""

    async def builtin_tables(self) -> TablesStatus: ...
    async def search_prompt(
        self,
        *,
        image_features: np.ndarray,
        request: PromptRequest,
        wait_s: float,
        progress_key: str | None,
        time_left_s: float | None,
    ) -> Interrogation: ...
    async def analyze(
        self, *, image_features: np.ndarray, top_k: int, wait_s: float
    ) -> Analysis: ...
    async def interrogation_progress(self, key: str) -> ChainProgress | None: ...


class InterrogationPipeline:
    def __init__(
        self,
        items: ItemEncoder,
        encoder: InterrogatingEncoder,
        captioner: CaptionerClient,
        custom_tables: RemoteCustomTables,
        request_timeout_s: float,
        admission: Admission,
    ) -> None:
        self.items, self.encoder, self.captioner_client = items, encoder, captioner
        self.custom_tables = custom_tables
        self.admission = admission
        self.captioner = RemoteModel(lambda: self.captioner_client.info())
        # Label tables still being made are waited for only within half a request's budget.
        self.max_wait_s = request_timeout_s / 2
        # Whether the encoder's last word was that its tables are ready: arrivals then are
        # not held up asking it again (a busy encoder answers slowly, and refusals must be
        # quick). Every answer carries the tables' state, so an encoder that restarts without
        # them is asked again from its next answer on.
        self._tables_ready = False

    async def prepare(self, data: bytes, field: str, request: PromptRequest) -> ImagePixels:
        """What an interrogation checks and decodes before it is run (now, or as a job): bad
        input (an unknown custom table, an image that is none) is refused here, at once. A
        custom table still being embedded is not bad input: the tables are checked again
        when the work runs, which answers 503 then, or, for a job, waits its turn."""
        with contextlib.suppress(Unavailable):
            await self.custom_tables.check(request.label_tables, "label_tables")
        if request.needs_caption:
            await self.check_caption_detail(request.caption_detail)
        return await self.pixels(data, field, caption=request.needs_caption)

    async def check_caption_detail(self, detail: CaptionDetail | None) -> None:
        """400 naming ``caption_detail`` when the served captioner does not offer ``detail``."""
        if detail is None:
            return
        info = await self.captioner.info()
        if detail in info.caption_details:
            return
        if info.caption_details:
            offers = "offers " + ", ".join(info.caption_details)
        else:
            offers = "makes one kind of caption; leave caption_detail out"
        raise InvalidInput(
            "caption_detail",
            f"'{detail}' is not offered: the served captioner ({info.family}) {offers}",
        )

    async def pixels(self, data: bytes, field: str, caption: bool = True) -> ImagePixels:
        """Image bytes -> CLIP's input pixels and, when ``caption``, the captioner's."""
        preprocessors = [(await self.items.model.get())[1]]
        if caption:
            preprocessors.append((await self.captioner.get())[1])
        clip, *captioner = await self.items.preprocessed(data, field, preprocessors)
        return ImagePixels(clip, captioner[0] if captioner else None)

    async def caption(
        self,
        pixels: ImagePixels,
        priority: Priority = Priority.INTERACTIVE,
        detail: CaptionDetail | None = None,
    ) -> str:
        """The caption of ``detail`` (checked with :meth:`check_caption_detail` first; None:
        the captioner's only or briefest)."""
        if pixels.caption is None:
            raise ValueError("no captioner pixels: make them with pixels(..., caption=True)")
        # Sent only when asked for: an older captioner service takes no detail.
        chosen = {} if detail is None else {"detail": detail}
        captions = await self.captioner_client.caption(
            pixels=pixels.caption[None], priority=priority, **chosen
        )
        return captions[0]

    async def _features(self, pixels: ImagePixels) -> np.ndarray:
        return (await self.items.encode_pixels([pixels.clip], Priority.INTERROGATION))[0]

    async def tables(self) -> TablesStatus:
        return await self.encoder.builtin_tables()

    async def interrogate(
        self, image: ImagePixels, request: PromptRequest, progress_key: str | None = None
    ) -> Interrogated:
        """The prompt, the caption used ("" in negative mode, which uses none) and the top
        terms of the custom label tables the request names. The caption is generated while
        CLIP encodes the image, unless given or not needed; with a ``progress_key``,
        :meth:`chain_step` tells how far it is meanwhile."""
        with timed_interrogation(request.mode.value):
            return await self._interrogate(image, request, progress_key)

    async def _interrogate(
        self, image: ImagePixels, request: PromptRequest, progress_key: str | None
    ) -> Interrogated:
        started = time.monotonic()
        await self._refuse_unless_tables_due()
        await self.custom_tables.check(request.label_tables, "label_tables")
        with refused_as_unavailable():
            async with self.admission.admitted(
                request.mode.value, request.cost, deadlines.time_left_s()
            ):
                steps: list[Awaitable[Any]] = [self._features(image)]
                if request.needs_caption:
                    caption = self.caption(image, Priority.INTERROGATION, request.caption_detail)
                    steps.append(caption)
                features, *generated = await gather_or_cancel(*steps)
                if generated:
                    request = request.with_caption(generated[0])
                answer, extra = await gather_or_cancel(
                    self.encoder.search_prompt(
                        image_features=features,
                        request=request,
                        wait_s=self._wait_left(started),
                        progress_key=progress_key,
                        time_left_s=deadlines.time_left_s(),
                    ),
                    self._custom(features, request.label_tables, EXTRA_TABLE_TOP_K),
                )
        self._tables_ready = answer.tables.state == "ready"
        if answer.prompt is None:
            raise tables_unavailable(answer.tables)
        used = "" if request.mode is Mode.NEGATIVE else request.caption or ""
        return Interrogated(answer.prompt, used, extra)

    async def chain_step(self, key: str) -> tuple[int, int] | None:
        """(step, at most this many steps) of the interrogation running under ``key``."""
        progress = await self.encoder.interrogation_progress(key=key)
        return None if progress is None else (progress.step, progress.steps)

    async def analyze(
        self, image: ImagePixels, top_k: int, label_tables: Sequence[str] = ()
    ) -> tuple[dict[str, list[tuple[str, float]]], CustomRankings | None]:
        """The top-k labels of each built-in table, and of the custom ``label_tables``."""
        started = time.monotonic()
        await self._refuse_unless_tables_due()
        await self.custom_tables.check(label_tables, "label_tables")
        features = await self._features(image)
        answer, extra = await gather_or_cancel(
            self.encoder.analyze(
                image_features=features, top_k=top_k, wait_s=self._wait_left(started)
            ),
            self._custom(features, label_tables, top_k),
        )
        self._tables_ready = answer.tables.state == "ready"
        if answer.labels is None:
            raise tables_unavailable(answer.tables)
        return answer.labels, extra

    async def _custom(
        self, features: np.ndarray, names: Sequence[str], top_k: int
    ) -> CustomRankings | None:
        """The image's top terms in each named custom table; None when none are asked."""
        if not names:
            return None
        return await self.custom_tables.rank(features, names, top_k, "label_tables")

    async def _refuse_unless_tables_due(self) -> None:
        """503 before any model work when the tables will not be ready in time."""
        if self._tables_ready:
            return
        status = await self.tables()
        self._tables_ready = status.state == "ready"
        if not status.due_within(self.max_wait_s):
            raise tables_unavailable(status)

    def _wait_left(self, started: float) -> float:
        return max(0.0, self.max_wait_s - (time.monotonic() - started))


@contextmanager
def refused_as_unavailable() -> Iterator[None]:
    """Admission's refusal as the entry answers it: 503 with ``Retry-After``."""
    try:
        yield
    except Overloaded as exc:
        raise Unavailable(f"busy: interrogations: {exc}", exc.retry_after_s) from None


def tables_unavailable(status: TablesStatus) -> Unavailable:
    """503: the label tables are not ready; the message says how far they are."""
    if status.state == "failed":
        message = f"label tables: the build failed ({status.error}) and is being retried"
        return Unavailable(message, MAX_RETRY_S // 10)
    eta = status.eta_s if status.eta_s is not None else MAX_RETRY_S // 10
    message = (
        f"label tables are being made for this CLIP model (first start): {status.progress}. "
        "Interrogation starts when they are ready; CLIP routes work meanwhile. Build them "
        "ahead of time with `clip-service warm-cache`."
    )
    return Unavailable(message, int(min(max(eta, MIN_RETRY_S), MAX_RETRY_S)))
