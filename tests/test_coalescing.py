"""The entry joins encoder calls that arrive while others are in flight
(clip_service/server/coalescing.py), keeping each request's answer, error, priority and
cancellation its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clip_service.errors import Unavailable
from clip_service.scheduling import Priority
from clip_service.server.coalescing import IN_FLIGHT, Coalescer, join_texts


class FakeEncoder:
    """Each text's row is its number; records every call and can hold calls open."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[list[str], Priority]] = []
        self.cancelled: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def send(self, texts: list[str], priority: Priority) -> np.ndarray:
        self.calls.append((texts, priority))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(texts)
            raise
        if self.fail:
            raise self.fail
        return np.array([[float(t)] for t in texts], dtype=np.float32)


def coalescer(fake: FakeEncoder, max_items: int = 64) -> Coalescer:
    return Coalescer(fake.send, join_texts, max_items)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_arriving_during_calls_go_out_together_each_with_its_own_rows():
    async def run() -> None:
        fake = FakeEncoder()
        encode = coalescer(fake)
        requests = [asyncio.create_task(encode([str(i), str(i + 100)])) for i in range(20)]
        await settle()
        assert len(fake.calls) == IN_FLIGHT  # the others wait for one to finish
        fake.release.set()
        answers = await asyncio.gather(*requests)
        for i, rows in enumerate(answers):
            assert rows[:, 0].tolist() == [i, i + 100]
        assert len(fake.calls) == IN_FLIGHT + 1  # the 18 waiting went as one call
        assert sorted(len(texts) for texts, _ in fake.calls) == [2] * IN_FLIGHT + [
            40 - 2 * IN_FLIGHT
        ]

    asyncio.run(run())


def test_joined_calls_stay_under_the_batch_limit_and_full_batches_go_alone():
    async def run() -> None:
        fake = FakeEncoder()
        encode = coalescer(fake, max_items=5)
        requests = [asyncio.create_task(encode([str(i), str(i)])) for i in range(8)]
        big = asyncio.create_task(encode([str(i) for i in range(5)]))
        fake.release.set()
        await asyncio.gather(*requests, big)
        assert max(len(texts) for texts, _ in fake.calls) <= 5
        assert [str(i) for i in range(5)] in [texts for texts, _ in fake.calls]

    asyncio.run(run())


def test_priorities_are_never_joined():
    async def run() -> None:
        fake = FakeEncoder()
        encode = coalescer(fake)
        background = [asyncio.create_task(encode(["1"], Priority.BACKGROUND)) for _ in range(6)]
        interactive = [asyncio.create_task(encode(["2"])) for _ in range(6)]
        await settle()
        # Background calls in flight hold no interactive request back.
        assert [p for _, p in fake.calls].count(Priority.INTERACTIVE) == IN_FLIGHT
        fake.release.set()
        await asyncio.gather(*background, *interactive)
        for texts, priority in fake.calls:
            assert set(texts) == ({"1"} if priority is Priority.BACKGROUND else {"2"})

    asyncio.run(run())


def test_a_failed_call_fails_each_request_in_it():
    async def run() -> None:
        fake = FakeEncoder(fail=Unavailable("busy: ClipEncoder", 3))
        encode = coalescer(fake)
        requests = [asyncio.create_task(encode([str(i)])) for i in range(6)]
        fake.release.set()
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), results

    asyncio.run(run())


def test_a_request_that_leaves_is_not_sent_and_does_not_cancel_the_others():
    async def run() -> None:
        fake = FakeEncoder()
        encode = coalescer(fake)
        first = [asyncio.create_task(encode([str(i)])) for i in range(IN_FLIGHT)]
        waiting = [asyncio.create_task(encode([str(i)])) for i in range(10, 14)]
        await settle()
        waiting[0].cancel()  # still queued: never sent
        first[0].cancel()  # alone in its call: the call is cancelled
        await settle()
        assert fake.cancelled == [["0"]]
        fake.release.set()
        answers = await asyncio.gather(*first[1:], *waiting[1:])
        assert [a[0, 0] for a in answers] == [*range(1, IN_FLIGHT), 11, 12, 13]
        sent = [t for texts, _ in fake.calls for t in texts]
        assert "10" not in sent

    asyncio.run(run())


def test_a_shared_call_is_cancelled_only_when_no_request_in_it_waits():
    async def run() -> None:
        fake = FakeEncoder()
        encode = coalescer(fake)
        blockers = [asyncio.create_task(encode(["0"])) for _ in range(IN_FLIGHT)]
        await settle()
        shared = [asyncio.create_task(encode([str(i)])) for i in range(1, 4)]
        blockers[0].cancel()  # frees a slot: the three go out as one call
        await settle()
        assert fake.calls[-1][0] == ["1", "2", "3"]
        shared[0].cancel()
        shared[1].cancel()
        await settle()
        assert ["1", "2", "3"] not in fake.cancelled  # one request still waits for it
        shared[2].cancel()
        await settle()
        assert ["1", "2", "3"] in fake.cancelled
        fake.release.set()
        assert [a[0, 0] for a in await asyncio.gather(*blockers[1:])] == [0] * (IN_FLIGHT - 1)
        with pytest.raises(asyncio.CancelledError):
            await shared[2]

    asyncio.run(run())
