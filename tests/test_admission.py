"""Admission for long work (clip_service/scheduling/admission.py), on a fake clock: a bounded
number run, a bounded queue waits in order, and work that could not finish before its
deadline behind the work ahead is refused at arrival, with when to retry."""

from __future__ import annotations

import asyncio

import pytest

from clip_service.scheduling import Admission, Overloaded
from clip_service.scheduling import admission as admission_module


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(admission_module.time, "monotonic", fake)
    return fake


async def hold(admission: Admission, release: asyncio.Event, **kwargs) -> None:
    async with admission.admitted("best", **kwargs):
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_then_a_fifo_queue_then_refusals(clock) -> None:
    async def main() -> None:
        admission = Admission(slots=1, max_queued=1)
        first, second = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(hold(admission, first))
        await settle()
        queued = asyncio.create_task(hold(admission, second))
        await settle()
        assert (admission.running, admission.queued) == (1, 1)
        with pytest.raises(Overloaded, match="1 already queued, the limit") as refused:
            async with admission.admitted("best"):
                raise AssertionError("not admitted")
        assert refused.value.retry_after_s >= 1
        first.set()
        await running
        await settle()
        assert (admission.running, admission.queued) == (1, 0)  # the queued one runs now
        second.set()
        await queued
        assert (admission.running, admission.queued) == (0, 0)

    asyncio.run(main())


def test_durations_are_learned_per_unit_of_cost_and_refuse_what_would_be_late(clock) -> None:
    async def main() -> None:
        admission = Admission(slots=2, max_queued=8)
        async with admission.admitted("best", cost=10):
            clock.now += 20  # 2 s per unit, alone on the model
        assert admission.expected_s("best", 5) == pytest.approx(10)
        assert admission.expected_s("fast", 5) == 0  # never measured: no estimate

        release = asyncio.Event()
        long = asyncio.create_task(hold(admission, release, cost=30))  # 60 s expected
        await settle()
        clock.now += 10  # 50 s of it left
        # A deadline 75 s away: admitted to finish within DEADLINE_SHARE of it, 60 s.
        assert 75 * admission_module.DEADLINE_SHARE == 60
        with pytest.raises(Overloaded, match="past its deadline") as refused:
            async with admission.admitted("best", cost=10, time_left_s=75):
                raise AssertionError("50 s ahead + 20 s of its own > 60 s")
        assert refused.value.retry_after_s == pytest.approx(10)
        async with admission.admitted("best", cost=5, time_left_s=75):
            pass  # 50 + 10 fits
        release.set()
        await long

    asyncio.run(main())


def test_work_sharing_the_model_learns_its_time_alone(clock) -> None:
    """Two pieces running together each get half the model: 10 s of wall time each is 5 s
    of model time, so the estimate does not double when slots are shared."""

    async def main() -> None:
        admission = Admission(slots=2, max_queued=0)
        a, b = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(admission, a, cost=1))
        second = asyncio.create_task(hold(admission, b, cost=1))
        await settle()
        clock.now += 10
        a.set()
        b.set()
        await asyncio.gather(first, second)
        assert admission.expected_s("best", 1) == pytest.approx(5)

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue_and_a_failure_teaches_nothing(clock) -> None:
    async def main() -> None:
        admission = Admission(slots=1, max_queued=2)
        release = asyncio.Event()
        running = asyncio.create_task(hold(admission, release))
        await settle()
        waiter = asyncio.create_task(hold(admission, asyncio.Event()))
        await settle()
        waiter.cancel()
        await settle()
        assert admission.queued == 0
        release.set()
        await running
        with pytest.raises(RuntimeError):
            async with admission.admitted("fast"):
                clock.now += 100
                raise RuntimeError("failed")
        assert admission.expected_s("fast", 1) == 0 and admission.running == 0

    asyncio.run(main())
