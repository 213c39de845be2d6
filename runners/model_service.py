"""What both model services share: their BentoML settings and the fail-fast start."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

from clip_service.models.clip import ModelUnavailableError
from clip_service.models.specs import ModelSpecError
from clip_service.scheduling import Overloaded
from clip_service.server.draining import GracefulShutdown
from clip_service.settings import get_settings

# BentoML recycles dependency connections every 100 requests / 300 s by default and kills
# calls in flight when it does (HTTP 500 under load); effectively never recycle.
NEVER_RECYCLE = {"max_requests": 1_000_000_000, "max_age": 1e9}


def model_service_config(name: str, workers: int) -> dict[str, Any]:
    """``@bentoml.service`` arguments of a model service.

    Its time limit is the entry's, plus a margin: an interrogation runs for as long as the
    entry lets it (the entry's timeout is what bounds a request), and interactive calls are
    bounded by the scheduler's wait budget long before.
    """
    settings = get_settings()
    return {
        "name": name,
        "workers": workers,
        "traffic": {"timeout": settings.request_timeout_s + 60},
        "runner_connection": NEVER_RECYCLE,
    }


class ModelBusy(BentoMLException):
    """429 to the caller (the entry service), whose message says when to retry.

    A 4xx, because BentoML replaces the message of every 5xx with a generic one.
    """

    error_code = HTTPStatus.TOO_MANY_REQUESTS


@contextmanager
def answer_overload_with_429() -> Iterator[None]:
    try:
        yield
    except Overloaded as exc:
        raise ModelBusy(str(exc)) from None


def drain_on_sigterm(service: Any) -> None:
    """On SIGTERM, serve the entry service's requests in flight before stopping."""
    settings = get_settings()
    service.add_asgi_middleware(
        GracefulShutdown,
        quiet_s=settings.shutdown_quiet_s,
        max_drain_s=settings.request_timeout_s + settings.shutdown_quiet_s,
    )


def exit_unless_loadable(check: Callable[[], object]) -> None:
    """Run ``check`` (from an ``on_deployment`` hook, once, in the serving process).

    BentoML restarts a worker whose start fails, forever; a model that cannot be had
    should instead stop the server with one clear line and a non-zero exit.
    """
    try:
        check()
    except (ModelSpecError, ModelUnavailableError) as exc:
        raise SystemExit(f"error: {exc}") from None
