"""Scheduling a model's work: interactive requests first, bulk work in bounded slices.

One :class:`Scheduler` per model worker owns the model's single execution thread. Callers
submit items for a :class:`Method` at a :class:`Priority`; the scheduler forms batches from
what is queued whenever the model is free (an idle model starts at once), always from the
most urgent class, and cuts bulk work into slices whose measured model time stays under a
bound, so an interactive request waits at most one slice.
"""

from clip_service.scheduling.admission import Admission
from clip_service.scheduling.scheduler import Overloaded, Scheduler, SchedulerObserver
from clip_service.scheduling.work import Method, Priority, WorkItem

__all__ = [
    "Admission",
    "Method",
    "Overloaded",
    "Priority",
    "Scheduler",
    "SchedulerObserver",
    "WorkItem",
]
