"""Every route's guard, without servers: its errors as answers, its deadline (504) and the
in-flight limit (429); and the per-request cost checks (tests/test_served_hardening.py
checks them on a real server)."""

from __future__ import annotations

import asyncio
import json

import bentoml
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from clip_service.errors import InvalidInput, NotServed, Unavailable
from clip_service.server.guard import RETRY_AFTER_S, RouteGuard
from clip_service.server.limits import check_classify_chars, check_rank_pairs, check_url_items
from clip_service.server.schemas import Item

cancelled: list[str] = []


async def slow(request) -> PlainTextResponse:
    try:
        await asyncio.sleep(float(request.query_params.get("s", "0")))
    except asyncio.CancelledError:
        cancelled.append(request.url.path)
        raise
    return PlainTextResponse("done")


def guarded_app(guard: RouteGuard) -> Starlette:
    """``/slow`` guarded; ``/livez`` not (probes have no guard: never refused for load)."""
    return Starlette(routes=[Route("/slow", guard(slow)), Route("/livez", slow)])


def run(app, *requests: tuple[str, float]) -> list[httpx.Response]:
    """Send the requests concurrently (each after its delay) to the ASGI app in process."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def one(url: str, delay: float) -> httpx.Response:
                await asyncio.sleep(delay)
                return await client.get(url)

            return await asyncio.gather(*(one(url, delay) for url, delay in requests))

    return asyncio.run(main())


def test_past_the_deadline_the_request_is_cancelled_and_answered_504():
    cancelled.clear()
    app = guarded_app(RouteGuard(timeout_s=0.3))
    fast, late = run(app, ("/slow", 0), ("/slow?s=5", 0))
    assert fast.text == "done"
    assert late.status_code == 504
    assert late.json() == {
        "error": f"timeout: no answer within 0.3 s; retry after {RETRY_AFTER_S} s"
    }
    assert late.headers["retry-after"] == str(RETRY_AFTER_S)
    assert cancelled == ["/slow"]


def test_beyond_max_concurrency_requests_are_answered_429_at_once():
    guard = RouteGuard(timeout_s=10, max_concurrency=2)
    answers = run(
        guarded_app(guard),
        ("/slow?s=0.5", 0),
        ("/slow?s=0.5", 0),
        ("/slow", 0.1),  # a third while two are in flight
        ("/livez?s=0", 0.1),  # probes are never refused
        ("/slow", 0.8),  # after the first two ended
    )
    assert [a.status_code for a in answers] == [200, 200, 429, 200, 200]
    refused = answers[2]
    assert refused.json()["error"] == (
        f"too many requests: 2 already in flight; retry after {RETRY_AFTER_S} s"
    )
    assert refused.headers["retry-after"] == str(RETRY_AFTER_S)
    assert guard.in_flight == 0


def test_a_routes_request_errors_are_its_answers() -> None:
    @RouteGuard(timeout_s=10)
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
    answer = asyncio.run(route(InvalidInput("items[0].text", "too long")))
    assert answer.status_code == 400 and json.loads(answer.body) == {
        "error": "items[0].text: too long"
    }
    with pytest.raises(ValueError):  # anything else is a bug: BentoML's 500
        asyncio.run(route(ValueError("bug")))


def test_a_route_taking_a_context_gives_it_the_errors_status() -> None:
    """BentoML answers such a route with its context's status (a 200 unless set)."""
    ctx = bentoml.Context()

    @RouteGuard(timeout_s=10)
    async def route(ctx: bentoml.Context) -> str:
        raise InvalidInput("file", "not a readable image")

    with ctx.in_request(Request({"type": "http", "headers": []})):
        answer = asyncio.run(route(ctx))
        assert answer.status_code == ctx.response.status_code == 400


def test_rank_pairs_are_bounded():
    check_rank_pairs(256, 256, 65_536)
    with pytest.raises(InvalidInput, match=r"^candidates: 257 queries x 256 candidates = 65792"):
        check_rank_pairs(257, 256, 65_536)


def test_img_uri_items_are_counted_across_the_request():
    items = [Item(img_uri="https://a.example/x.png"), Item(text="a cat"), Item(img_blob="AA==")]
    check_url_items(items * 2, "items", 2)
    with pytest.raises(InvalidInput, match=r"^items: 3 img_uri items, more than the limit of 2"):
        check_url_items(items * 3, "items", 2)


def test_classify_characters_count_each_label_in_the_template():
    check_classify_chars(["cat", "dog"], "a photo of a {}", 2 * 16)  # "a photo of a cat" x 2
    with pytest.raises(InvalidInput, match=r"^labels: 2 labels in the template make 32 char"):
        check_classify_chars(["cat", "dog"], "a photo of a {}", 31)


def test_routes_take_the_serving_entrys_guard_built_from_its_settings(monkeypatch, tmp_path):
    """The limits are the entry's (its settings, read when the service starts), not read
    when the routes are declared: a test's or a deployment's settings apply."""
    from clip_service.server.entry import Entry
    from clip_service.server.routes.common import guard
    from clip_service.settings import Settings

    settings = Settings(request_timeout_s=0.3, max_concurrency=7, jobs_db=tmp_path / "jobs.db")
    entry = Entry.build(settings, encoder=object(), captioner=None, dependencies=())
    assert (entry.guard.timeout_s, entry.guard.max_concurrency) == (0.3, 7)
    monkeypatch.setattr(bentoml, "get_current_service", lambda: type("Api", (), {"entry": entry}))
    app = Starlette(routes=[Route("/slow", guard(slow))])
    (late,) = run(app, ("/slow?s=5", 0))
    assert late.status_code == 504
    assert late.json()["error"].startswith("timeout: no answer within 0.3 s")
