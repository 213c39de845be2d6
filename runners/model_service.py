"""What both model services share: their BentoML settings, the process's guards and the
fail-fast start.

Importing this module prepares the process (:func:`clip_service.process.prepare`), so a
model service served alone (``bentoml serve runners.clip_encoder:ClipEncoder``, the split
deployment) runs with the same version gate, hooks and logging as the combined server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

from clip_service import process
from clip_service.models.clip import ModelUnavailableError
from clip_service.models.specs import ModelSpecError
from clip_service.scheduling import Overloaded
from clip_service.settings import get_settings

process.prepare(get_settings().header_read_timeout_s)

# BentoML recycles dependency connections every 100 requests / 300 s by default and kills
# calls in flight when it does (HTTP 500 under load); effectively never recycle.
NEVER_RECYCLE = {"max_requests": 1_000_000_000, "max_age": 1e9}


def model_service_config(name: str, workers: int) -> dict[str, Any]:
    """``@bentoml.service`` arguments of a model service.

    Its time limit is the longest the entry may wait for it, plus a margin: a request's
    (``REQUEST_TIMEOUT_S``) or a job's (``JOB_TIMEOUT_S``). The caller's own deadline is
    what bounds the work: when it gives up, the call is cancelled (:mod:`clip_service.process.
    disconnect`). BentoML's client of this service takes the same limit.
    """
    settings = get_settings()
    return {
        "name": name,
        "workers": workers,
        "traffic": {"timeout": max(settings.request_timeout_s, settings.job_timeout_s) + 60},
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


def guard(service: Any) -> None:
    """On SIGTERM, serve the entry service's requests in flight before stopping; stop the
    work of a call whose caller has gone."""
    settings = get_settings()
    process.guard_service(
        service,
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
