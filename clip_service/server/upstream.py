"""The entry service's side of a model-service outage: 503 + Retry-After, and readiness.

A model service can be busy (its queue is over the wait budget: a 429), restarting (its
worker died; circus starts a new one) or unreachable (another host, link down). Each is
temporary, so the client is told to retry (503 with ``Retry-After``), never a bare 500, and
the entry's ``/readyz`` answers 503 at once while a model service is not ready.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException

from clip_service.errors import Unavailable
from clip_service.server.guard import RETRY_AFTER_S

_RETRY_AFTER = re.compile(r"retry after (\d+) s")


# A pooled connection the server had closed, or a worker that died mid-call: not timeouts.
RETRIED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Guarded:
    """A dependency client (BentoML's aiohttp one) whose calls survive a stale connection
    and otherwise fail with :class:`~clip_service.errors.Unavailable` (503), not a bare 500.

    The model services close idle keep-alive connections after 5 s (uvicorn), the client
    keeps them 15 s (aiohttp), and aiohttp does not retry a POST that meets a closed one:
    under load a few calls fail with "Broken pipe" or "Server disconnected". The model APIs
    are pure functions, so such a call is sent once more; a call that still cannot get an
    answer (worker killed, host unreachable, timeout) is a 503 the client may retry, and so
    is a model service's 429 (its queue is full), with the Retry-After it gave.
    """

    def __init__(self, client: Any, name: str) -> None:
        self._client, self._name = client, name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._client, attr)
        if attr not in getattr(self._client, "endpoints", ()):  # not an API of the service
            return value

        @functools.wraps(value)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                try:
                    return await value(*args, **kwargs)
                except RETRIED:
                    return await value(*args, **kwargs)
            except (aiohttp.ClientError, TimeoutError) as exc:
                message = f"{self._name} is unreachable or restarting ({exc!r})"
                raise Unavailable(f"service unavailable: {message}", RETRY_AFTER_S) from exc
            except BentoMLException as exc:
                if exc.error_code == HTTPStatus.TOO_MANY_REQUESTS:
                    raise busy(self._name, exc) from None
                raise

        return call


async def dependencies_ready(dependencies: Iterable[Any], timeout_s: float) -> bool:
    """Whether every remote dependency answers its ``/readyz`` with 200 within ``timeout_s``.

    BentoML's own probe waits 5 s per dependency and answers 500 when one refuses the
    connection; this one is bounded and treats every failure as "not ready". In-process
    dependencies (development mode) have no probe and count as ready.
    """

    async def ready(dependency: Any) -> bool:
        probe = getattr(dependency, "is_ready", None)
        if probe is None:
            return True
        try:
            return await asyncio.wait_for(probe(max(1, int(timeout_s))), timeout_s)
        except (TimeoutError, aiohttp.ClientError):
            return False

    return all(await asyncio.gather(*(ready(d) for d in dependencies)))


def busy(service: str, exc: BentoMLException) -> Unavailable:
    """A model service's 429 (its queue is over the wait budget) as the entry's 503, with the
    Retry-After the model service's message gives."""
    try:
        message = str(json.loads(str(exc))[0]["error"])
    except (ValueError, LookupError, TypeError):
        message = str(exc)
    found = _RETRY_AFTER.search(message)
    return Unavailable(f"busy: {service} has {message}", int(found[1]) if found else RETRY_AFTER_S)
