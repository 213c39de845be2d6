"""clip_service.server.upstream without servers: retry, 503 mapping (a model service's 429
included), readiness; and shared computations that outlive the callers who give up."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from bentoml.exceptions import BentoMLException

from clip_service.errors import Unavailable
from clip_service.scheduling import Overloaded
from clip_service.server.guard import RETRY_AFTER_S
from clip_service.server.once import Once
from clip_service.server.upstream import Guarded, busy, dependencies_ready


class FakeClient:
    """BentoML's client shape: API methods named in ``endpoints``, returning coroutines."""

    def __init__(self, failures: list[Exception]) -> None:
        self.endpoints = {"encode": None}
        self.failures, self.calls = failures, 0

    def encode(self, value: int):
        async def call() -> int:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return value * 2

        return call()


def test_a_stale_connection_is_retried_once():
    client = FakeClient([aiohttp.ServerDisconnectedError()])
    assert asyncio.run(Guarded(client, "Enc").encode(3)) == 6
    assert client.calls == 2


@pytest.mark.parametrize(
    "failures",
    [
        [aiohttp.ServerDisconnectedError(), aiohttp.ServerDisconnectedError()],
        [aiohttp.ClientConnectionError("refused")],
        [TimeoutError()],
    ],
)
def test_an_unreachable_service_is_a_503(failures):
    client = FakeClient(failures)
    with pytest.raises(Unavailable, match=r"^service unavailable: Enc is unreachable") as raised:
        asyncio.run(Guarded(client, "Enc").encode(3))
    assert raised.value.status == 503
    assert raised.value.headers == {"Retry-After": str(RETRY_AFTER_S)}


def test_other_attributes_pass_through():
    client = FakeClient([])
    assert Guarded(client, "Enc").endpoints is client.endpoints


class Probe:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def is_ready(self, timeout: int) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer == "hang":
            await asyncio.sleep(60)
        return self.answer


@pytest.mark.parametrize(
    ("answers", "ready"),
    [
        ([True, True, object()], True),  # object(): in-process, no probe
        ([True, False], False),
        ([True, aiohttp.ClientConnectionError()], False),
        ([True, "hang"], False),
    ],
)
def test_readiness_needs_every_dependency_in_time(answers, ready):
    dependencies = [a if type(a) is object else Probe(a) for a in answers]
    assert asyncio.run(dependencies_ready(dependencies, timeout_s=0.2)) is ready


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
