"""Every route's guard: its deadline, the in-flight limit and its errors, answered in the
project's error shape.

BentoML replaces the message of every 5xx a route raises with a generic one, and answers its
own timeout (504) and ``max_concurrency`` (429) outside every middleware (so without CORS
headers, the error shape or a ``Retry-After``). Each route is therefore wrapped by a
:class:`RouteGuard`, which answers for it:

* a :class:`~clip_service.errors.RequestError` it raises (400, 413, 501, 503, ...) as that
  error's status, message and headers;
* past ``REQUEST_TIMEOUT_S``, 504 with ``Retry-After`` (the route is cancelled);
* with ``MAX_CONCURRENCY`` requests already in its routes, 429 with ``Retry-After``.

BentoML's own timeout stays configured a few seconds longer, as a backstop this one beats.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

import bentoml
from starlette.responses import JSONResponse

from clip_service.errors import RequestError, error_body
from clip_service.server import deadlines

P = ParamSpec("P")

# Seconds a client is told to wait after a 429 or 504, or a model service's outage.
RETRY_AFTER_S = 5


class RouteGuard:
    """Guards routes (``run``, or as a decorator); one instance holds the in-flight count of
    all the routes it guards: the serving entry's (``Entry.guard``) guards every route."""

    def __init__(self, timeout_s: float, max_concurrency: int = 0) -> None:
        self.timeout_s, self.max_concurrency = timeout_s, max_concurrency
        self.in_flight = 0

    def __call__(self, route: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(route)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await self.run(route, *args, **kwargs)

        return guarded

    async def run(self, route: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """``route(*args, **kwargs)`` under this guard: its answer, or the refusal."""
        if self.max_concurrency and self.in_flight >= self.max_concurrency:
            return _refused(429, f"too many requests: {self.max_concurrency} already in flight")
        self.in_flight += 1
        try:
            async with deadlines.within(self.timeout_s):
                return await route(*args, **kwargs)
        except TimeoutError:
            refusal = _refused(504, f"timeout: no answer within {self.timeout_s:g} s")
            return _for_context(refusal, args, kwargs)
        except RequestError as exc:
            return _for_context(error_response(exc), args, kwargs)
        finally:
            self.in_flight -= 1


def _for_context(response: JSONResponse, args: tuple, kwargs: dict) -> JSONResponse:
    """BentoML gives a route that takes a ``bentoml.Context`` its context's status, not the
    returned response's: the context must carry the error's status too."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, bentoml.Context):
            value.response.status_code = response.status_code
    return response


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(str(exc)), exc.status, headers=exc.headers)


def _refused(status: int, message: str) -> JSONResponse:
    body = error_body(f"{message}; retry after {RETRY_AFTER_S} s")
    return JSONResponse(body, status, headers={"Retry-After": str(RETRY_AFTER_S)})
