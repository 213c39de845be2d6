"""The project's Prometheus metrics, served by BentoML's ``/metrics`` beside its own.

``bentoml serve`` starts every worker with ``PROMETHEUS_MULTIPROC_DIR`` set, so these
``prometheus_client`` metrics write to the shared multiprocess files and the entry
service's ``/metrics`` reports them for all services (README, "Metrics").

Queue wait is measured where BentoML's batcher decides it: each queued request carries
the time it entered the dispatcher (``Job.enqueue_time``, after its body was read and
deserialised); when a batch is released, :func:`_install_dispatcher_hook` hands the
batch function each request's wait (release time minus enqueue time, the same quantity
BentoML compares with ``max_latency_ms``) through a context variable.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram

from . import request_ids

F = TypeVar("F", bound=Callable[..., Any])

# Seconds: a few ms (a lone text) up to the 60 s latency budget and past it.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# A batch: ms (one text) to minutes (4096 texts or 8 BLIP captions on a CPU).
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Items per batch: powers of two up to TEXT_MAX_BATCH_SIZE's default.
SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
# An interrogation: 100 ms (fast, tiny models) to half an hour (best, ViT-L on a CPU).
INTERROGATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

QUEUE_WAIT = Histogram(
    "clip_service_queue_wait_seconds",
    "Time a request waited in a model service's batch queue before its batch started",
    ["service", "method"],
    buckets=QUEUE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "clip_service_batch_size",
    "Items (images or texts) per batch run by a model service",
    ["service", "method"],
    buckets=SIZE_BUCKETS,
)
BATCH_DURATION = Histogram(
    "clip_service_batch_duration_seconds",
    "Time a model service spent running one batch",
    ["service", "method"],
    buckets=BATCH_BUCKETS,
)
INTERROGATION_DURATION = Histogram(
    "clip_service_interrogation_duration_seconds",
    "Time of one interrogation in the entry service, by mode (failed ones included)",
    ["mode"],
    buckets=INTERROGATION_BUCKETS,
)
LABEL_CACHE = Counter(
    "clip_service_label_cache_lookups",
    "Label-table cache lookups: hit (file loaded), miss (no file, built), "
    "rebuild (file unusable, built again)",
    ["table", "result"],
)

_batch_waits: ContextVar[Sequence[float] | None] = ContextVar("batch_waits", default=None)


def _install_dispatcher_hook() -> None:
    """Make BentoML's batcher publish each request's queue wait to the batch function.

    Wraps ``CorkDispatcher.outbound_call`` (bentoml 1.4.39), which runs each released
    batch in a task of its own. That task copies the context of the first request that
    ever reached the dispatcher, so its request id is also cleared: a batch serves many.
    """
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    original = CorkDispatcher.outbound_call
    if getattr(original, "clip_service_hook", False):
        return

    @functools.wraps(original)
    async def outbound_call(
        self: CorkDispatcher, inputs_info: Sequence[Any], *args: Any, **kwargs: Any
    ) -> Any:
        released = time.time()
        _batch_waits.set([released - job.enqueue_time for job in inputs_info])
        request_ids.clear()
        return await original(self, inputs_info, *args, **kwargs)

    outbound_call.clip_service_hook = True  # type: ignore[attr-defined]
    CorkDispatcher.outbound_call = outbound_call


def batch_metrics(service: str, method: str) -> Callable[[F], F]:
    """Decorate a batchable API's function: queue waits, batch size and batch time.

    Outside BentoML's batcher (in-process calls) there is no queue: only size and time.
    """
    _install_dispatcher_hook()
    labels = {"service": service, "method": method}

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def timed(self: object, batch: Sequence[Any]) -> Any:
            for wait in _batch_waits.get() or ():
                QUEUE_WAIT.labels(**labels).observe(wait)
            BATCH_SIZE.labels(**labels).observe(len(batch))
            with BATCH_DURATION.labels(**labels).time():
                return func(self, batch)

        return timed  # type: ignore[return-value]

    return decorate


def timed_interrogation(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Decorate ``interrogate(self, image, mode, ...)``: its duration by mode."""

    @functools.wraps(func)
    async def timed(self: object, image: object, mode: Any, *args: Any, **kwargs: Any) -> Any:
        with INTERROGATION_DURATION.labels(mode=str(getattr(mode, "value", mode))).time():
            return await func(self, image, mode, *args, **kwargs)

    return timed


def label_cache_lookup(table: str, result: str) -> None:
    """Count one label-table lookup: ``hit``, ``miss`` or ``rebuild``."""
    LABEL_CACHE.labels(table=table, result=result).inc()
