"""The model scheduler: immediate dispatch, batches from what queued meanwhile, priorities,
bulk work in slices, refusal when over the wait budget, cancellation, errors.

The fake model blocks on a gate the test opens, so every assertion is about which items run
together and in which order, never about how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from clip_service.scheduling import Method, Overloaded, Priority, Scheduler
from clip_service.scheduling.scheduler import CostModel


class GatedModel:
    """Records each batch; each call waits until the test lets it finish."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)
        self.fail_on: str | None = None

    def run(self, items: Sequence[str]) -> np.ndarray:
        self.batches.append(list(items))
        self.started.release()
        self._gate.acquire(timeout=10)  # bounded, so a failing test cannot hang the process
        if self.fail_on in items:
            raise RuntimeError("model failed")
        return np.array([[float(item.split("-")[-1])] for item in items])

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.release()


async def started(model: GatedModel, count: int = 1) -> None:
    """Wait (off the event loop) until ``count`` more batches have started."""
    for _ in range(count):
        assert await asyncio.to_thread(model.started.acquire, timeout=10), "no batch started"


def scheduler(model: GatedModel, **kwargs) -> Scheduler:
    methods = [
        Method("texts", model.run, max_batch=kwargs.pop("max_batch", 8)),
        Method("prefixed", model.run, max_batch=100, merge=False),
        Method("other", model.run, max_batch=8),
    ]
    options = {"slice_s": 0.1, "max_wait_s": 60.0} | kwargs
    made = Scheduler(methods, **options)
    made.costs.smoothing = 0.0  # costs stay as each test sets them, whatever the gate takes
    return made


def items(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def values(out: np.ndarray) -> list[int]:
    return [int(v) for v in out[:, 0]]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_idle_model_starts_at_once_and_arrivals_form_the_next_batch() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model)
        first = asyncio.create_task(s.run("texts", ["a-0"]))
        await started(model)  # alone, without any wait window
        later = [asyncio.create_task(s.run("texts", items(name, 2))) for name in "bcd"]
        await asyncio.sleep(0.05)  # let them queue while the model is busy
        model.release(2)
        await started(model)
        assert values(await first) == [0]
        assert [values(await t) for t in later] == [[0, 1]] * 3
        assert model.batches == [["a-0"], ["b-0", "b-1", "c-0", "c-1", "d-0", "d-1"]]

    run(scenario())


def test_batches_respect_the_limit_and_keep_each_callers_order() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model, max_batch=4)
        model.release(10)
        out = await asyncio.gather(s.run("texts", items("a", 6)), s.run("texts", items("b", 3)))
        assert [values(o) for o in out] == [list(range(6)), list(range(3))]
        assert all(len(batch) <= 4 for batch in model.batches)
        assert [x for batch in model.batches for x in batch] == items("a", 6) + items("b", 3)

    run(scenario())


def test_interactive_goes_before_interrogation_before_background() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model)
        blocker = asyncio.create_task(s.run("other", ["x-0"]))
        await started(model)
        callers = [
            asyncio.create_task(s.run("texts", ["bg-0"], Priority.BACKGROUND)),
            asyncio.create_task(s.run("texts", ["ir-0"], Priority.INTERROGATION)),
            asyncio.create_task(s.run("texts", ["ia-0"], Priority.INTERACTIVE)),
        ]
        await asyncio.sleep(0.05)
        model.release(4)
        await asyncio.gather(blocker, *callers)
        assert model.batches[1:] == [["ia-0"], ["ir-0"], ["bg-0"]]

    run(scenario())


def test_bulk_work_runs_in_slices_and_interactive_waits_at_most_one() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model, max_batch=100, slice_s=0.05)
        s.costs.observe("texts", Priority.BACKGROUND, items=10, seconds=0.1)  # 10 ms per item
        build = asyncio.create_task(s.run("texts", items("bg", 80), Priority.BACKGROUND))
        await started(model)
        assert model.batches == [items("bg", 50)]  # nobody about: a long slice, 0.5 s
        urgent = asyncio.create_task(s.run("texts", ["ia-7"]))
        await asyncio.sleep(0.05)
        model.release()
        await started(model)
        assert model.batches[1] == ["ia-7"]  # right after the slice that was running
        model.release(10)
        assert values(await urgent) == [7]
        assert values(await build) == list(range(80))
        # With an interactive request just seen, the rest ran in short slices (0.05 s).
        assert [len(b) for b in model.batches[2:]] == [5] * 6

    run(scenario())


def test_bulk_work_waits_a_slice_for_a_clients_next_request() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model, slice_s=2.0)  # bulk waits up to 2 s after an interactive batch
        first = asyncio.create_task(s.run("texts", ["ia-1"]))
        await started(model)
        build = asyncio.create_task(s.run("texts", items("bg", 3), Priority.BACKGROUND))
        await asyncio.sleep(0.05)
        model.release()
        assert values(await first) == [1]
        await asyncio.sleep(0.1)  # the client's next request, a moment after its answer
        second = asyncio.create_task(s.run("texts", ["ia-2"]))
        model.release(5)
        assert values(await second) == [2]
        await build
        assert model.batches[:2] == [["ia-1"], ["ia-2"]]  # not behind the bulk slice

    run(scenario())


def test_concurrent_bulk_jobs_take_turns() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model, slice_s=0.02)  # 0.2 s slices with nobody about
        s.costs.observe("prefixed", Priority.INTERROGATION, items=1, seconds=0.1)  # 2 per slice
        blocker = asyncio.create_task(s.run("other", ["x-0"], Priority.BACKGROUND))
        await started(model)
        a = asyncio.create_task(s.run("prefixed", items("a", 4), Priority.INTERROGATION))
        b = asyncio.create_task(s.run("prefixed", items("b", 4), Priority.INTERROGATION))
        await asyncio.sleep(0.05)
        model.release(10)
        await asyncio.gather(blocker, a, b)
        # Not merged (the method shares a prefix within a work item), alternating slices.
        assert [batch[0][0] for batch in model.batches[1:]] == ["a", "b", "a", "b"]
        assert all(len({x[0] for x in batch}) == 1 for batch in model.batches)

    run(scenario())


def test_interactive_over_the_wait_budget_is_refused_with_retry_after() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model, max_wait_s=2.0, max_batch=100)
        s.costs.observe("texts", Priority.INTERACTIVE, items=1, seconds=0.5)
        blocker = asyncio.create_task(s.run("other", ["x-0"]))
        await started(model)
        admitted = [asyncio.create_task(s.run("texts", items("a", 3)))]  # nothing ahead
        await asyncio.sleep(0.05)
        admitted.append(asyncio.create_task(s.run("texts", items("b", 2))))  # 1.5 s ahead
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await s.run("texts", ["c-0"])  # 2.5 s ahead: over the 2 s budget
        assert refused.value.retry_after_s == 3
        assert "retry after 3 s" in str(refused.value)
        # Bulk work is never refused: nobody waits for it.
        background = asyncio.create_task(s.run("texts", items("bg", 50), Priority.BACKGROUND))
        model.release(100)
        await asyncio.gather(blocker, *admitted, background)
        assert ["c-0"] not in model.batches

    run(scenario())


def test_a_cancelled_callers_items_are_not_run() -> None:
    async def scenario() -> None:
        model = GatedModel()
        s = scheduler(model)
        blocker = asyncio.create_task(s.run("other", ["x-0"]))
        await started(model)
        gone = asyncio.create_task(s.run("texts", items("gone", 3)))
        kept = asyncio.create_task(s.run("texts", items("kept", 2)))
        await asyncio.sleep(0.05)
        gone.cancel()
        model.release(2)
        assert values(await kept) == [0, 1]
        await blocker
        assert model.batches == [["x-0"], items("kept", 2)]

    run(scenario())


def test_a_model_error_fails_its_batch_and_serving_goes_on() -> None:
    async def scenario() -> None:
        model = GatedModel()
        model.fail_on = "bad-0"
        s = scheduler(model)
        model.release(3)
        with pytest.raises(RuntimeError, match="model failed"):
            await s.run("texts", ["bad-0"])
        assert values(await s.run("texts", ["good-4"])) == [4]

    run(scenario())


def test_empty_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="no items"):
        run(scheduler(GatedModel()).run("texts", []))


def test_cost_model_converges_on_the_slice_that_fits() -> None:
    costs = CostModel(smoothing=1.0)  # no smoothing: follow each measurement
    assert costs.items_within("m", Priority.BACKGROUND, 0.5) == 1  # unmeasured: a probe
    # A fixed 0.1 s per batch plus 0.01 s per item: the slice grows towards 40 items.
    n = 1
    for _ in range(20):
        costs.observe("m", Priority.BACKGROUND, n, 0.1 + 0.01 * n)
        n = costs.items_within("m", Priority.BACKGROUND, 0.5)
    assert 38 <= n <= 40


class DepthRecorder:
    """A scheduler observer keeping the last queue depth reported per class."""

    def __init__(self) -> None:
        self.depth: dict[Priority, int] = {}

    def waited(self, method: str, priority: Priority, seconds: float) -> None: ...

    def ran(self, method: str, priority: Priority, size: int, seconds: float) -> None: ...

    def refused(self, priority: Priority) -> None: ...

    def queued(self, priority: Priority, items: int) -> None:
        self.depth[priority] = items


def test_queue_depth_counts_the_items_waiting_per_class_and_returns_to_zero() -> None:
    """The autoscaling signal (clip_service_queue_depth): items not yet sent to the model."""

    async def scenario() -> None:
        model, recorder = GatedModel(), DepthRecorder()
        s = scheduler(model, observer=recorder, max_batch=4)
        first = asyncio.create_task(s.run("texts", ["a-0"]))
        await started(model)  # running: not waiting
        assert recorder.depth[Priority.INTERACTIVE] == 0
        waiting = [
            asyncio.create_task(s.run("texts", items("b", 3))),
            asyncio.create_task(s.run("texts", items("c", 3), Priority.BACKGROUND)),
        ]
        await asyncio.sleep(0.05)
        assert recorder.depth[Priority.INTERACTIVE] == 3
        assert recorder.depth[Priority.BACKGROUND] == 3
        model.release(10)
        await asyncio.gather(first, *waiting)
        await asyncio.sleep(0.05)  # the serving loop's next turn
        assert set(recorder.depth.values()) == {0}

    run(scenario())


def test_a_dead_workers_queue_depth_is_dropped_when_a_worker_starts(tmp_path) -> None:
    """A killed model worker cannot mark itself dead: the next worker's metrics drop its
    live gauge files (summed into the queue depth), and keep everything else."""
    import os
    import subprocess
    import sys

    from clip_service.metrics import forget_dead_processes

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    files = [
        f"gauge_livesum_{gone.pid}.db",
        f"gauge_livesum_{os.getpid()}.db",
        f"counter_{gone.pid}.db",
        f"histogram_{gone.pid}.db",
    ]
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_processes(str(tmp_path)) == [gone.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files[1:])
