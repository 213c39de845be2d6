"""The entry's interrogation pipeline with fake model services: label tables that are not
ready, and custom tables that do not exist, are refused before any model work; past the
admission bound a request is refused at arrival; ready tables give the encoder's prompt for
the image's features and caption, computed at interrogation priority."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from clip_service.engines.clip_engine import Analysis, Interrogation
from clip_service.errors import InvalidInput, Unavailable
from clip_service.interrogation.interrogator import Mode
from clip_service.interrogation.requests import PromptRequest
from clip_service.interrogation.table_build import TablesStatus
from clip_service.scheduling import Admission, Priority
from clip_service.server.interrogation import ImagePixels, InterrogationPipeline

READY = TablesStatus(state="ready", labels_done=10, labels_total=10, origins={"flavors": "hub"})
BUILDING = TablesStatus(state="building", labels_done=2, labels_total=10, encoding=True, eta_s=900)
SOON = TablesStatus(state="building", labels_done=9, labels_total=10, encoding=True, eta_s=3)
LOADING = TablesStatus(state="building", labels_done=0, labels_total=10)


class FakeItems:
    """ItemEncoder's image path: a fixed feature vector, recording the priority asked for."""

    def __init__(self) -> None:
        self.priorities: list[Priority] = []

    async def encode_pixels(self, pixels: list[np.ndarray], priority: Priority) -> np.ndarray:
        self.priorities.append(priority)
        return np.ones((len(pixels), 4), dtype=np.float32)


class FakeLabelLists:
    """Custom label tables: ``known`` exists, ``embedding`` is being embedded."""

    known, embedding = "mine", "new"

    async def check(self, names: list[str], field: str) -> None:
        for name in names:
            if name == self.embedding:
                raise Unavailable(f"label table {name!r} is being embedded", 10)
            if name != self.known:
                raise InvalidInput(field, f"no custom label table {name!r}")

    async def rank(self, features: np.ndarray, names: list[str], top_k: int, field: str) -> dict:
        await self.check(names, field)
        return {name: [] for name in names}


class FakeEncoder:
    def __init__(self, status: TablesStatus) -> None:
        self.status, self.calls = status, []
        self.hold = asyncio.Event()  # set: interrogations finish at once
        self.hold.set()

    async def builtin_tables(self) -> TablesStatus:
        return self.status

    async def search_prompt(self, *, request: PromptRequest, wait_s: float, **kwargs: Any) -> Any:
        self.calls.append({"request": request, "wait_s": wait_s, **kwargs})
        await self.hold.wait()
        ready = self.status.state == "ready" or wait_s >= (self.status.eta_s or 1e9)
        prompt = f"{request.caption}, prompt" if ready else None
        return Interrogation(prompt=prompt, tables=self.status)

    async def analyze(self, **kwargs: Any) -> Analysis:
        self.calls.append(kwargs)
        return Analysis(labels={"mediums": [("oil", 0.3)]}, tables=self.status)


class FakeCaptioner:
    def __init__(self) -> None:
        self.priorities: list[Priority] = []

    async def info(self) -> Any:
        raise AssertionError("preprocessing is faked in these tests")

    async def caption(self, pixels: np.ndarray, priority: Priority) -> list[str]:
        self.priorities.append(priority)
        return ["a cat"]


def pipeline(
    status: TablesStatus, timeout_s: float = 600, admission: Admission | None = None
) -> tuple[InterrogationPipeline, Any]:
    items, encoder, captioner = FakeItems(), FakeEncoder(status), FakeCaptioner()
    made = InterrogationPipeline(
        items,  # type: ignore[arg-type]
        encoder,
        captioner,
        FakeLabelLists(),  # type: ignore[arg-type]
        timeout_s,
        admission or Admission(slots=2, max_queued=4),
    )
    return made, (items, encoder, captioner)


IMAGE = ImagePixels(clip=np.zeros((3, 4, 4), np.float32), caption=np.zeros((3, 4, 4), np.float32))


def test_ready_tables_give_the_encoders_prompt_at_interrogation_priority() -> None:
    made, (items, encoder, captioner) = pipeline(READY)
    prompt, caption, _ = asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.BEST)))
    assert (prompt, caption) == ("a cat, prompt", "a cat")
    assert items.priorities == captioner.priorities == [Priority.INTERROGATION]
    (call,) = encoder.calls
    assert call["request"] == PromptRequest(mode=Mode.BEST, caption="a cat")
    np.testing.assert_array_equal(call["image_features"], np.ones(4))


def test_negative_mode_needs_no_caption_and_reports_none() -> None:
    made, (_, _, captioner) = pipeline(READY)
    _, caption, _ = asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.NEGATIVE)))
    assert caption == "" and captioner.priorities == []


def test_tables_far_from_ready_are_a_503_with_progress_before_any_model_work() -> None:
    made, (items, encoder, captioner) = pipeline(BUILDING)
    with pytest.raises(Unavailable) as refused:
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST)))
    message = str(refused.value)
    assert "2 of 10 labels embedded (20%), about 15 min left" in message
    assert "warm-cache" in message
    assert refused.value.headers == {"Retry-After": "300"}  # capped: a build of 15 min
    assert items.priorities == captioner.priorities == encoder.calls == []
    with pytest.raises(Unavailable):
        asyncio.run(made.analyze(IMAGE, 3))


def test_tables_due_within_half_the_request_budget_are_waited_for() -> None:
    made, (_, encoder, _) = pipeline(SOON, timeout_s=60)
    prompt, _, _ = asyncio.run(
        made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given"))
    )
    assert prompt == "given, prompt"
    assert 29 < encoder.calls[0]["wait_s"] <= 30
    short, _ = pipeline(SOON, timeout_s=4)  # 2 s of waiting allowed: not enough for 3 s
    with pytest.raises(Unavailable) as refused:
        asyncio.run(short.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given")))
    assert refused.value.headers == {"Retry-After": "5"}  # at least MIN_RETRY_S


def test_tables_being_loaded_are_waited_for() -> None:
    """After a restart the tables load from the cache in seconds: no 503 for that."""
    made, (_, encoder, _) = pipeline(LOADING, timeout_s=60)
    with pytest.raises(Unavailable):  # the fake never becomes ready: the encoder says no
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given")))
    assert len(encoder.calls) == 1 and encoder.calls[0]["wait_s"] > 29  # it was asked to wait


def test_a_failed_build_says_so() -> None:
    failed = TablesStatus(state="failed", labels_done=0, labels_total=10, error="disk full")
    made, _ = pipeline(failed)
    with pytest.raises(Unavailable, match="build failed \\(disk full\\) and is being retried"):
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="c")))


def test_an_unknown_custom_table_is_refused_before_any_model_work() -> None:
    made, (items, encoder, captioner) = pipeline(READY)
    with pytest.raises(InvalidInput, match="label_tables: no custom label table 'nope'"):
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.BEST, label_tables=("nope",))))
    with pytest.raises(InvalidInput, match="label_tables"):
        asyncio.run(made.analyze(IMAGE, 3, ["mine", "nope"]))
    assert items.priorities == captioner.priorities == encoder.calls == []


def test_past_the_admission_bound_a_request_is_refused_at_arrival() -> None:
    """One slot, no queue: while one interrogation runs, the next is a 503 with Retry-After
    before anything (its caption included) is computed for it."""

    async def main() -> None:
        made, (items, encoder, captioner) = pipeline(READY, admission=Admission(1, 0))
        encoder.hold.clear()
        first = asyncio.create_task(made.interrogate(IMAGE, PromptRequest(mode=Mode.BEST)))
        while not encoder.calls:
            await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="busy: interrogations") as refused:
            await made.interrogate(IMAGE, PromptRequest(mode=Mode.BEST))
        assert refused.value.headers["Retry-After"]
        assert len(captioner.priorities) == len(items.priorities) == 1  # the first's only
        encoder.hold.set()
        assert (await first).prompt == "a cat, prompt"
        await made.interrogate(
            IMAGE, PromptRequest(mode=Mode.FAST, caption="given")
        )  # a slot again

    asyncio.run(main())


def test_ready_tables_are_asked_for_once_and_a_restarted_encoder_still_says_503() -> None:
    """Arrivals do not wait on a busy encoder to hear again that its tables are ready; an
    encoder that lost them since (restarted, building) answers without a prompt: 503."""
    made, (_, encoder, _) = pipeline(READY)
    asked = 0
    answer = encoder.builtin_tables

    async def counted() -> TablesStatus:
        nonlocal asked
        asked += 1
        return await answer()

    encoder.builtin_tables = counted
    for _ in range(3):
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given")))
    assert asked == 1
    encoder.status = BUILDING
    with pytest.raises(Unavailable, match="labels embedded"):
        asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given")))


def test_each_interrogation_is_timed_under_its_mode() -> None:
    from prometheus_client import REGISTRY

    def count(mode: str) -> float:
        name = "clip_service_interrogation_duration_seconds_count"
        return REGISTRY.get_sample_value(name, {"mode": mode}) or 0.0

    made, _ = pipeline(READY)
    before = count("fast"), count("classic")
    asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.FAST, caption="given")))
    asyncio.run(made.interrogate(IMAGE, PromptRequest(mode=Mode.CLASSIC, caption="given")))
    assert (count("fast") - before[0], count("classic") - before[1]) == (1, 1)


def test_prepare_refuses_bad_input_at_once_and_leaves_a_table_being_embedded_to_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a job's submission runs: an unknown table is a 400 then; one still being
    embedded is not bad input (the job waits for it), and the run itself answers 503."""
    made, (_, encoder, _) = pipeline(READY)

    async def decoded(data: bytes, field: str, caption: bool = True) -> ImagePixels:
        return IMAGE

    monkeypatch.setattr(made, "pixels", decoded)
    with pytest.raises(InvalidInput, match="label_tables: no custom label table 'nope'"):
        asyncio.run(made.prepare(b"png", "image", PromptRequest(label_tables=("nope",))))
    embedding = PromptRequest(mode=Mode.FAST, caption="c", label_tables=("new",))
    assert asyncio.run(made.prepare(b"png", "image", embedding)) is IMAGE
    with pytest.raises(Unavailable, match="being embedded"):
        asyncio.run(made.interrogate(IMAGE, embedding))
    assert encoder.calls == []  # refused before any model work
