"""What the scheduler queues (work items: a caller's items for one method) and how batches form."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Priority(StrEnum):
    """Work classes, most urgent first: a batch is always formed from the first non-empty."""

    INTERACTIVE = "interactive"  # someone waits for this one answer: encode, rank, caption...
    INTERROGATION = "interrogation"  # the model calls of a running interrogation
    BACKGROUND = "background"  # label-table builds: nobody waits, runs when all else is done


@dataclass(frozen=True)
class Method:
    """A batch function of the model: ``run(items)`` returns one output row per item.

    Items are a list (texts) or an array whose first axis is the batch (pixels); outputs are
    arrays or lists with one entry per item. ``merge``: whether items of different callers
    may share a batch (not for texts that must share one prompt prefix to run fast).
    """

    name: str
    run: Callable[[Any], Any]
    max_batch: int
    merge: bool = True


def join(parts: Sequence[Any]) -> Any:
    """Concatenate item (or output) slices along the batch axis, keeping their type."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [element for part in parts for element in part]


@dataclass(eq=False)
class WorkItem:
    """One caller's items for one method; done when every item's output has come back."""

    method: Method
    items: Sequence[Any]
    priority: Priority
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    dispatched: int = 0  # items handed to batches so far
    started: float | None = None  # when the first of its items went to the model
    _outputs: dict[int, Any] = field(default_factory=dict)  # start offset -> output rows
    _done: int = 0

    @property
    def remaining(self) -> int:
        return len(self.items) - self.dispatched

    @property
    def abandoned(self) -> bool:
        """Cancelled by its caller or failed: nothing more of it needs running."""
        return self.future.done()

    def deliver(self, start: int, outputs: Any) -> None:
        self._outputs[start] = outputs
        self._done += len(outputs)
        if self._done == len(self.items) and not self.future.done():
            self.future.set_result(join([self._outputs[k] for k in sorted(self._outputs)]))

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class Batch:
    """Slices ``[start, stop)`` of one or more work items, run as one call of ``method``."""

    method: Method
    priority: Priority
    parts: list[tuple[WorkItem, int, int]]

    @property
    def size(self) -> int:
        return sum(stop - start for _, start, stop in self.parts)

    def inputs(self) -> Any:
        return join([work.items[start:stop] for work, start, stop in self.parts])

    def deliver(self, outputs: Any) -> None:
        if len(outputs) != self.size:
            raise ValueError(f"{self.method.name} gave {len(outputs)} rows for {self.size} items")
        offset = 0
        for work, start, stop in self.parts:
            work.deliver(start, outputs[offset : offset + stop - start])
            offset += stop - start

    def fail(self, exc: BaseException) -> None:
        for work, _, _ in self.parts:
            work.fail(exc)


class WorkQueues:
    """One FIFO queue of work items per priority, and the rule that turns them into batches."""

    def __init__(self) -> None:
        self._queues: dict[Priority, list[WorkItem]] = {priority: [] for priority in Priority}

    def put(self, work: WorkItem) -> None:
        self._queues[work.priority].append(work)

    def queued(self, priority: Priority) -> list[WorkItem]:
        """Live work items of ``priority`` with items left, oldest first (abandoned dropped)."""
        queue = self._queues[priority]
        queue[:] = [work for work in queue if not work.abandoned and work.remaining]
        return queue

    def depth(self, priority: Priority) -> int:
        """Items of ``priority`` waiting to be sent to the model."""
        return sum(work.remaining for work in self.queued(priority))

    def next_priority(self) -> Priority | None:
        """The class :meth:`take` would serve now (None: nothing is queued)."""
        return next((priority for priority in Priority if self.queued(priority)), None)

    def take(self, limit: Callable[[Method, Priority], int]) -> Batch | None:
        """The next batch: the most urgent class's oldest work item's method, up to ``limit`` items.

        Jobs of the same method and class join it in arrival order when the method merges.
        A work item left with items after a bulk slice goes to the back of its queue, so
        concurrent bulk work items (interrogations) take turns.
        """
        for priority in Priority:
            queue = self.queued(priority)
            if not queue:
                continue
            method = queue[0].method
            budget = max(1, limit(method, priority))
            parts: list[tuple[WorkItem, int, int]] = []
            for work in list(queue):
                if parts and not method.merge:
                    break
                if work.method is not method:
                    continue
                n = min(work.remaining, budget)
                parts.append((work, work.dispatched, work.dispatched + n))
                work.dispatched += n
                budget -= n
                if work.started is None:
                    work.started = time.monotonic()
                if budget == 0:
                    break
            head = queue[0]
            if head.remaining and priority is not Priority.INTERACTIVE:
                queue.append(queue.pop(0))
            return Batch(method, priority, parts)
        return None
