"""The background label-table build: progress, published tables first, waiters that give up
leave it running, failures are retried, and the engine answers "not yet" instead of waiting
when the tables will not be ready in time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from clip_service.interrogation import table_build as table_build_module
from clip_service.interrogation.label_cache import LabelCache
from clip_service.interrogation.labels import LabelTable
from clip_service.interrogation.table_build import TableBuild, TablesStatus

DIM = 8
TABLES = {
    "mediums": LabelTable.of("mediums", [f"medium {i}" for i in range(30)]),
    "flavors": LabelTable.of("flavors", [f"flavor {i}" for i in range(50)]),
}
TOTAL = 80


def features(texts: Sequence[str]) -> np.ndarray:
    """Deterministic fake text features: one random row per text, seeded by the text."""
    return np.stack(
        [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=DIM) for text in texts]
    ).astype(np.float32)


class GatedEncoder:
    """Encodes a chunk each time the test opens the gate; counts what it encoded."""

    def __init__(self) -> None:
        self.gate = asyncio.Semaphore(0)
        self.encoded = 0
        self.fail_next = False

    async def __call__(self, texts: Sequence[str]) -> np.ndarray:
        await self.gate.acquire()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("encoder down")
        self.encoded += len(texts)
        return features(texts)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def build(tmp_path: Path, encoder, **kwargs) -> TableBuild:
    cache = LabelCache(tmp_path, "model", encoder, chunk_size=10, progress=False, **kwargs)
    return TableBuild(cache, TABLES)


async def until(condition, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_progress_counts_labels_and_the_build_survives_waiters_that_give_up(tmp_path) -> None:
    async def scenario() -> None:
        encoder = GatedEncoder()
        tables = build(tmp_path, encoder)
        tables.start()
        status = tables.status()
        assert (status.state, status.labels_done, status.labels_total) == ("building", 0, TOTAL)
        assert status.eta_s is None  # no rate measured yet
        for _ in range(3):
            encoder.gate.release()
        await until(lambda: tables.done == 30)
        eta = tables.status().eta_s
        assert eta is not None and eta > 0 and tables.status().encoding
        assert "30 of 80 labels embedded (38%)" in tables.status().progress
        # A waiter that times out, and one that is cancelled, leave the build running.
        assert await tables.wait(0.05) is None
        waiter = asyncio.create_task(tables.wait(30))
        await asyncio.sleep(0.05)
        waiter.cancel()
        for _ in range(5):
            encoder.gate.release()
        ready = await tables.wait(10)
        assert ready is not None and ready.origins == {"mediums": "built", "flavors": "built"}
        assert encoder.encoded == TOTAL  # each label once: nothing restarted
        assert tables.status() == TablesStatus(
            state="ready", labels_done=TOTAL, labels_total=TOTAL, origins=ready.origins
        )

    run(scenario())


def test_published_tables_come_first_and_count_as_done(tmp_path) -> None:
    fetched: list[str] = []

    async def fetch(table: LabelTable, dim: int | None) -> np.ndarray | None:
        fetched.append(table.name)
        if table.name != "mediums":
            return None  # not published: built here
        unit = features(table.labels)
        return (unit / np.linalg.norm(unit, axis=1, keepdims=True)).astype(np.float16)

    async def scenario() -> None:
        encoder = GatedEncoder()
        tables = build(tmp_path, encoder, fetch=fetch)
        tables.start()
        await until(lambda: tables.done == 30)
        assert encoder.encoded == 0
        for _ in range(5):
            encoder.gate.release()
        ready = await tables.wait(10)
        assert ready is not None and ready.origins == {"mediums": "hub", "flavors": "built"}
        assert encoder.encoded == 50 and fetched == ["mediums", "flavors"]
        # A restart loads both from the cache and still knows where they came from.
        again = build(tmp_path, GatedEncoder(), fetch=fetch)
        reloaded = await again.wait(10)
        assert reloaded is not None and reloaded.origins == ready.origins
        assert reloaded.made_now == ()
        assert fetched == ["mediums", "flavors"]  # no second download

    run(scenario())


def test_a_failed_build_is_reported_and_retried(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(table_build_module, "RETRY_AFTER_FAILURE_S", 0.05)

    async def scenario() -> None:
        encoder = GatedEncoder()
        encoder.fail_next = True
        tables = build(tmp_path, encoder)
        tables.start()
        encoder.gate.release()
        await until(lambda: tables.status().state == "failed")
        assert "encoder down" in (tables.status().error or "")
        for _ in range(8):
            encoder.gate.release()
        assert await tables.wait(10) is not None
        assert tables.status().state == "ready" and tables.status().error is None

    run(scenario())


def test_loading_is_worth_waiting_for_and_encoding_only_when_due() -> None:
    def status(**fields) -> TablesStatus:
        return TablesStatus(labels_done=1, labels_total=4, **fields)

    assert status(state="ready").due_within(0)
    assert not status(state="failed").due_within(1e9)
    assert status(state="building", encoding=False).due_within(1)  # loading, downloading
    assert not status(state="building", encoding=True).due_within(1e9)  # no rate yet
    assert status(state="building", encoding=True, eta_s=20).due_within(30)
    assert not status(state="building", encoding=True, eta_s=40).due_within(30)


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30 s"), (600, "10 min"), (9000, "2.5 h")], ids=str
)
def test_progress_names_the_time_left(seconds: float, text: str) -> None:
    status = TablesStatus(state="building", labels_done=1, labels_total=4, eta_s=seconds)
    assert status.progress == f"1 of 4 labels embedded (25%), about {text} left"
