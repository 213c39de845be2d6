"""Errors a route answers itself (503 with Retry-After, 501), a model service's 429 as the
entry's 503, and shared computations that outlive the callers who give up on them."""

from __future__ import annotations

import asyncio
import json

import pytest
from bentoml.exceptions import BentoMLException

from clip_service.once import Once
from clip_service.scheduling import Overloaded
from clip_service.service_errors import (
    NotServed,
    Unavailable,
    answers_service_errors,
    busy,
)
from clip_service.upstream import Guarded


def test_a_route_answers_its_service_errors_itself() -> None:
    @answers_service_errors
    async def route(error: Exception | None) -> str:
        if error:
            raise error
        return "result"

    assert asyncio.run(route(None)) == "result"
    answer = asyncio.run(route(Unavailable("tables: 10% done", 42)))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "42"
    assert json.loads(answer.body) == {"error": "tables: 10% done"}
    answer = asyncio.run(route(NotServed("CAPTION_MODEL=none")))
    assert answer.status_code == 501 and "retry-after" not in answer.headers
    with pytest.raises(ValueError):  # anything else is not its business
        asyncio.run(route(ValueError("bug")))


class BusyClient:
    """A dependency client whose service answers 429 the way BentoML relays it."""

    def __init__(self, status: int) -> None:
        self.endpoints = {"encode_texts": None}
        self.status = status

    def encode_texts(self) -> object:
        async def call() -> None:
            body = json.dumps([{"error": str(Overloaded(12.3))}])
            raise BentoMLException(body, error_code=self.status)

        return call()


def test_a_model_services_429_is_the_entrys_503_with_its_retry_after() -> None:
    with pytest.raises(Unavailable) as caught:
        asyncio.run(Guarded(BusyClient(429), "ClipEncoder").encode_texts())
    assert caught.value.headers == {"Retry-After": "13"}
    assert str(caught.value).startswith("busy: ClipEncoder has about 12.3 s of queued work")
    with pytest.raises(BentoMLException):  # other errors pass through unchanged
        asyncio.run(Guarded(BusyClient(400), "ClipEncoder").encode_texts())


def test_busy_without_a_readable_message_still_says_when_to_retry() -> None:
    unavailable = busy("BlipCaptioner", BentoMLException("garbled", error_code=429))
    assert unavailable.headers == {"Retry-After": "5"} and "garbled" in str(unavailable)


def test_a_shared_computation_survives_a_caller_that_gives_up() -> None:
    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        runs = []

        async def compute() -> str:
            runs.append(1)
            started.set()
            await release.wait()
            return "value"

        once = Once(compute)
        impatient = asyncio.create_task(asyncio.wait_for(once, 0.01))
        await started.wait()
        with pytest.raises(TimeoutError):
            await impatient
        release.set()
        assert await once == "value"
        assert runs == [1]  # the same computation finished: not restarted

    asyncio.run(scenario())
