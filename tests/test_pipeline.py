"""The entry's interrogation pipeline with fake model services: label tables that are not
ready get a 503 with their progress before any model work; ready ones give the encoder's
prompt for the image's features and caption, computed at interrogation priority."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip_service.engines.clip_engine import Analysis, Interrogation
from clip_service.errors import Unavailable
from clip_service.interrogation import Mode
from clip_service.interrogation.table_build import TablesStatus
from clip_service.scheduling import Priority
from clip_service.server.interrogation import InterrogationPipeline

READY = TablesStatus(state="ready", labels_done=10, labels_total=10, origins={"flavors": "hub"})
BUILDING = TablesStatus(state="building", labels_done=2, labels_total=10, encoding=True, eta_s=900)
SOON = TablesStatus(state="building", labels_done=9, labels_total=10, encoding=True, eta_s=3)
LOADING = TablesStatus(state="building", labels_done=0, labels_total=10)


class FakeItems:
    """ItemEncoder's image path: a fixed feature vector, recording the priority asked for."""

    def __init__(self) -> None:
        self.priorities: list[Priority] = []

    async def encode_image(self, image: Image.Image, priority: Priority) -> np.ndarray:
        self.priorities.append(priority)
        return np.ones(4, dtype=np.float32)


class FakeEncoder:
    def __init__(self, status: TablesStatus) -> None:
        self.status, self.calls = status, []

    async def label_tables(self) -> TablesStatus:
        return self.status

    async def interrogate(self, **kwargs: Any) -> Interrogation:
        self.calls.append(kwargs)
        ready = self.status.state == "ready" or kwargs["wait_s"] >= (self.status.eta_s or 1e9)
        prompt = f"{kwargs['caption']}, prompt" if ready else None
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


def pipeline(status: TablesStatus, timeout_s: float = 600) -> tuple[InterrogationPipeline, Any]:
    items, encoder, captioner = FakeItems(), FakeEncoder(status), FakeCaptioner()
    # No custom label tables are asked for here: no label-list client is needed.
    made = InterrogationPipeline(items, encoder, captioner, None, timeout_s)  # type: ignore[arg-type]

    async def caption(image: Image.Image, priority: Priority = Priority.INTERACTIVE) -> str:
        return (await captioner.caption(np.zeros((1, 3, 4, 4)), priority))[0]

    made.caption = caption  # type: ignore[method-assign]
    return made, (items, encoder, captioner)


IMAGE = Image.new("RGB", (8, 8))


def test_ready_tables_give_the_encoders_prompt_at_interrogation_priority() -> None:
    made, (items, encoder, captioner) = pipeline(READY)
    prompt, caption, _ = asyncio.run(made.interrogate(IMAGE, Mode.BEST, None, 8, None))
    assert (prompt, caption) == ("a cat, prompt", "a cat")
    assert items.priorities == captioner.priorities == [Priority.INTERROGATION]
    (call,) = encoder.calls
    assert call["mode"] is Mode.BEST and call["caption"] == "a cat"
    np.testing.assert_array_equal(call["image_features"], np.ones(4))


def test_negative_mode_needs_no_caption_and_reports_none() -> None:
    made, (_, _, captioner) = pipeline(READY)
    _, caption, _ = asyncio.run(made.interrogate(IMAGE, Mode.NEGATIVE, None, 8, None))
    assert caption == "" and captioner.priorities == []


def test_tables_far_from_ready_are_a_503_with_progress_before_any_model_work() -> None:
    made, (items, encoder, captioner) = pipeline(BUILDING)
    with pytest.raises(Unavailable) as refused:
        asyncio.run(made.interrogate(IMAGE, Mode.FAST, None, 8, None))
    message = str(refused.value)
    assert "2 of 10 labels embedded (20%), about 15 min left" in message
    assert "warm-cache" in message
    assert refused.value.headers == {"Retry-After": "300"}  # capped: a build of 15 min
    assert items.priorities == captioner.priorities == encoder.calls == []
    with pytest.raises(Unavailable):
        asyncio.run(made.analyze(IMAGE, 3))


def test_tables_due_within_half_the_request_budget_are_waited_for() -> None:
    made, (_, encoder, _) = pipeline(SOON, timeout_s=60)
    prompt, _, _ = asyncio.run(made.interrogate(IMAGE, Mode.FAST, "given", 8, None))
    assert prompt == "given, prompt"
    assert 29 < encoder.calls[0]["wait_s"] <= 30
    short, _ = pipeline(SOON, timeout_s=4)  # 2 s of waiting allowed: not enough for 3 s
    with pytest.raises(Unavailable) as refused:
        asyncio.run(short.interrogate(IMAGE, Mode.FAST, "given", 8, None))
    assert refused.value.headers == {"Retry-After": "5"}  # at least MIN_RETRY_S


def test_tables_being_loaded_are_waited_for() -> None:
    """After a restart the tables load from the cache in seconds: no 503 for that."""
    made, (_, encoder, _) = pipeline(LOADING, timeout_s=60)
    with pytest.raises(Unavailable):  # the fake never becomes ready: the encoder says no
        asyncio.run(made.interrogate(IMAGE, Mode.FAST, "given", 8, None))
    assert len(encoder.calls) == 1 and encoder.calls[0]["wait_s"] > 29  # it was asked to wait


def test_a_failed_build_says_so() -> None:
    failed = TablesStatus(state="failed", labels_done=0, labels_total=10, error="disk full")
    made, _ = pipeline(failed)
    with pytest.raises(Unavailable, match="build failed \\(disk full\\) and is being retried"):
        asyncio.run(made.interrogate(IMAGE, Mode.FAST, "c", 8, None))
