"""The project's Prometheus metrics, served by BentoML's ``/metrics`` beside its own.

``bentoml serve`` starts every worker with ``PROMETHEUS_MULTIPROC_DIR`` set, so these
``prometheus_client`` metrics write to the shared multiprocess files and the entry
service's ``/metrics`` reports them for all services (docs/operations.md, "Metrics").

Queue wait and depth, batch size and batch time come from each model service's scheduler
(:class:`SchedulerMetrics`), per method and priority class.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

import psutil
from prometheus_client import Counter, Gauge, Histogram, multiprocess

from clip_service.scheduling import Priority

# Seconds: a few ms (a lone text) up to the 60 s wait budget and past it.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# A batch: ms (one text) to minutes (a large BLIP batch on a CPU).
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Items per batch: powers of two up to 4096.
SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
# An interrogation: 100 ms (fast, tiny models) to half an hour (best, ViT-L on a CPU).
INTERROGATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

_SCHEDULER_LABELS = ["service", "method", "priority"]
QUEUE_WAIT = Histogram(
    "clip_service_queue_wait_seconds",
    "Time a request waited in a model service's queue before its first items ran",
    _SCHEDULER_LABELS,
    buckets=QUEUE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "clip_service_batch_size",
    "Items (images or texts) per batch run by a model service",
    _SCHEDULER_LABELS,
    buckets=SIZE_BUCKETS,
)
BATCH_DURATION = Histogram(
    "clip_service_batch_duration_seconds",
    "Time a model service spent running one batch",
    _SCHEDULER_LABELS,
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "clip_service_queue_depth",
    "Items (images or texts) waiting in a model service's queue, not yet sent to the model",
    ["service", "priority"],
    multiprocess_mode="livesum",  # summed over the service's live workers
)
REFUSED = Counter(
    "clip_service_refused",
    "Requests a model service refused because its queue was over the wait budget",
    ["service", "priority"],
)
INTERROGATION_DURATION = Histogram(
    "clip_service_interrogation_duration_seconds",
    "Time of one interrogation in the entry service, by mode (failed ones included)",
    ["mode"],
    buckets=INTERROGATION_BUCKETS,
)
LABEL_CACHE = Counter(
    "clip_service_label_cache_lookups",
    "Label-table cache lookups: hit (file loaded), miss (no file: fetched or built), "
    "rebuild (file unusable, made again)",
    ["table", "result"],
)


def forget_dead_processes(directory: str | None = None) -> list[int]:
    """Drop the live gauges (the queue depth) of service processes that died without saying
    so: a killed worker's last value would otherwise be summed with the live ones forever,
    and an autoscaler would keep scaling for a queue nobody has. The pids dropped."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return []
    dead = {
        int(path.stem.rsplit("_", 1)[1])
        for path in Path(directory).glob("gauge_live*_*.db")
        if path.stem.rsplit("_", 1)[1].isdigit()
    }
    dead = sorted(pid for pid in dead if not psutil.pid_exists(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return dead


class SchedulerMetrics:
    """A model service's scheduler, reported per method and priority class. Made when the
    service's worker starts, which drops the live gauges its dead predecessors left."""

    def __init__(self, service: str) -> None:
        self.service = service
        forget_dead_processes()

    def waited(self, method: str, priority: Priority, seconds: float) -> None:
        QUEUE_WAIT.labels(self.service, method, priority.value).observe(seconds)

    def ran(self, method: str, priority: Priority, size: int, seconds: float) -> None:
        BATCH_SIZE.labels(self.service, method, priority.value).observe(size)
        BATCH_DURATION.labels(self.service, method, priority.value).observe(seconds)

    def refused(self, priority: Priority) -> None:
        REFUSED.labels(self.service, priority.value).inc()

    def queued(self, priority: Priority, items: int) -> None:
        QUEUE_DEPTH.labels(self.service, priority.value).set(items)


def timed_interrogation(mode: str) -> AbstractContextManager[object]:
    """Times the interrogation inside it under ``mode`` (failed ones included)."""
    return INTERROGATION_DURATION.labels(mode=mode).time()


def label_cache_lookup(table: str, result: str) -> None:
    """Count one label-table lookup: ``hit``, ``miss`` or ``rebuild``."""
    LABEL_CACHE.labels(table=table, result=result).inc()
