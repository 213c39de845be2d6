"""Errors a route answers itself: 503 (retry later, and when) and 501 (not served here).

BentoML replaces the message of every 5xx an API raises with a generic one, so these are
turned into responses by :func:`answers_service_errors` around each route instead; 4xx
input errors keep going through BentoML (:class:`~clip_service.errors.InvalidInput`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from .errors import error_body

P = ParamSpec("P")
R = TypeVar("R")

_RETRY_AFTER = re.compile(r"retry after (\d+) s")


class ServiceError(Exception):
    """An answer other than the route's result: ``status``, message, extra headers."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(str(self)), self.status, headers=self.headers)


class Unavailable(ServiceError):
    """Temporarily unable to serve (busy, or still preparing): retry after ``retry_after_s``."""

    status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, {"Retry-After": str(max(1, int(retry_after_s)))})


class NotServed(ServiceError):
    """This deployment does not serve the route (e.g. ``CAPTION_MODEL=none``)."""

    status = 501


def busy(service: str, exc: BentoMLException) -> Unavailable:
    """A model service's 429 (its queue is over the wait budget) as the entry's 503."""
    try:
        message = str(json.loads(str(exc))[0]["error"])
    except (ValueError, LookupError, TypeError):
        message = str(exc)
    found = _RETRY_AFTER.search(message)
    return Unavailable(f"busy: {service} has {message}", int(found[1]) if found else 5)


def answers_service_errors(route: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[Any]]:
    """Decorate a route: a :class:`ServiceError` it raises becomes its JSON answer."""

    @functools.wraps(route)
    async def answered(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await route(*args, **kwargs)
        except ServiceError as exc:
            return exc.response()

    return answered
