"""clip_service.upstream without servers: retry, 503 mapping, Retry-After and readiness."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from clip_service.upstream import RETRY_AFTER_S, Guarded, RetryAfter, dependencies_ready


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
    with pytest.raises(ServiceUnavailable, match=r"^Enc: ") as raised:
        asyncio.run(Guarded(client, "Enc").encode(3))
    assert raised.value.error_code == 503


def test_other_attributes_pass_through():
    client = FakeClient([])
    assert Guarded(client, "Enc").endpoints is client.endpoints


def _app() -> TestClient:
    generic = {"error": "An unexpected error has occurred, please check the server log."}
    routes = [
        Route("/generic", lambda r: JSONResponse(generic, status_code=503)),
        Route("/named", lambda r: JSONResponse({"error": "queue full"}, status_code=503)),
        Route("/plain", lambda r: PlainTextResponse("not ready", status_code=503)),
        Route("/fine", lambda r: JSONResponse({"ok": 1})),
    ]
    return TestClient(RetryAfter(Starlette(routes=routes)))


def test_every_503_carries_retry_after_and_a_message():
    client = _app()
    for path in ("/generic", "/named", "/plain"):
        response = client.get(path)
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(RETRY_AFTER_S)
        assert response.json()["error"], path
    assert client.get("/generic").json()["error"].startswith("service unavailable")
    assert client.get("/named").json() == {"error": "queue full"}
    fine = client.get("/fine")
    assert fine.json() == {"ok": 1} and "retry-after" not in fine.headers


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
