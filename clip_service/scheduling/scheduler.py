"""The scheduler: one model thread, fed a new batch the moment it is free.

Why not BentoML's adaptive batcher: it holds a lone request up to its learned average queue
wait (which a burst inflates for a minute), knows no priorities, and runs a 4,095-text
label chunk in one piece while everyone else waits. Here:

* an idle model starts a request at once; requests that arrive while it runs form the next
  batch, up to the method's batch limit;
* the batch comes from the most urgent non-empty class (:class:`~.work.Priority`);
* interrogation and background work run in slices whose expected model time, measured per
  method, stays within ``slice_s`` while interactive requests are about (one came within
  ``INTERACTIVE_WINDOW_S``), so such a request waits at most one slice; with nobody about,
  slices are ``IDLE_SLICE_FACTOR`` times longer, which bulk work runs faster in;
* after an interactive batch, bulk work waits up to one slice for the next interactive
  request (a client's next request arrives within milliseconds of its last answer), so a
  client sending requests one after another rarely finds the model inside a bulk slice;
* an interactive request that would wait longer than ``max_wait_s`` is refused at once with
  :class:`Overloaded` (its ``retry_after_s`` is the wait it would have had).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from clip_service.scheduling.work import Batch, Method, Priority, WorkItem, WorkQueues

# Interactive traffic this recent keeps bulk slices short; without it, they are this many
# times longer (fewer, larger batches: a label-table build on a CPU runs ~1.5x faster).
INTERACTIVE_WINDOW_S = 2.0
IDLE_SLICE_FACTOR = 10


class Overloaded(Exception):
    """More work is queued than can start (or finish) in time: refused before it starts."""

    def __init__(self, wait_s: float, reason: str | None = None) -> None:
        self.retry_after_s = max(1, math.ceil(wait_s))
        why = f"{reason}; " if reason else ""
        super().__init__(
            f"about {wait_s:.1f} s of queued work ahead; {why}retry after {self.retry_after_s} s"
        )


class SchedulerObserver(Protocol):
    """Where the scheduler reports what it does (Prometheus metrics in the services)."""

    def waited(self, method: str, priority: Priority, seconds: float) -> None:
        """A work item's first items went to the model ``seconds`` after it was queued."""

    def ran(self, method: str, priority: Priority, size: int, seconds: float) -> None:
        """A batch of ``size`` items took ``seconds`` of model time."""

    def refused(self, priority: Priority) -> None:
        """A work item was refused as :class:`Overloaded`."""

    def queued(self, priority: Priority, items: int) -> None:
        """``items`` of ``priority`` are waiting to be sent to the model (an autoscaler's
        signal: work that more replicas would take)."""


class CostModel:
    """Model seconds per item for each method and class, a moving average of measurements.

    Per class because the same method costs differently per class (short label texts in the
    background, whole prompts interactively). Measured from batches of every size, so small
    slices, which pay a fixed overhead over few items, converge on the size that fits.
    """

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self._per_item: dict[tuple[str, Priority], float] = {}

    def observe(self, method: str, priority: Priority, items: int, seconds: float) -> None:
        sample = seconds / max(items, 1)
        old = self._per_item.get((method, priority))
        key = (method, priority)
        self._per_item[key] = sample if old is None else old + self.smoothing * (sample - old)

    def seconds(self, method: str, priority: Priority, items: int) -> float:
        """Expected model time of ``items`` items (0 before any measurement)."""
        return items * self._per_item.get((method, priority), 0.0)

    def items_within(self, method: str, priority: Priority, seconds: float) -> int:
        """How many items fit in ``seconds`` (1 before any measurement: a probe)."""
        per_item = self._per_item.get((method, priority))
        return 1 if not per_item else max(1, int(seconds / per_item))


class Scheduler:
    """Runs one model's methods on a single thread, batching and ordering the callers' work."""

    def __init__(
        self,
        methods: Iterable[Method],
        *,
        slice_s: float,
        max_wait_s: float,
        observer: SchedulerObserver | None = None,
        thread_name: str = "model",
    ) -> None:
        self.methods = {method.name: method for method in methods}
        self.slice_s, self.max_wait_s = slice_s, max_wait_s
        self.observer = observer
        self.costs = CostModel()
        self._queues = WorkQueues()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._wake: asyncio.Event | None = None
        self._serving: asyncio.Task[None] | None = None
        self._busy_until = 0.0  # expected end of the running batch (time.monotonic)
        self._interactive_at = -math.inf  # when the last interactive work item came

    async def run(
        self, method: str, items: Sequence[Any], priority: Priority = Priority.INTERACTIVE
    ) -> Any:
        """The method's outputs for ``items`` (not empty), one row per item, in order.

        Cancelling the caller drops its items that have not started.
        """
        if not len(items):
            raise ValueError("no items to run")
        item_method = self.methods[method]
        wake = self._ensure_serving()
        if priority is Priority.INTERACTIVE:
            self._interactive_at = time.monotonic()
            wait = self.expected_wait()
            if wait > self.max_wait_s:
                if self.observer:
                    self.observer.refused(priority)
                raise Overloaded(wait)
        work = WorkItem(item_method, items, priority, asyncio.get_running_loop().create_future())
        self._queues.put(work)
        self._report_depth()
        wake.set()
        return await work.future

    def expected_wait(self) -> float:
        """Seconds a new interactive work item would wait: the running batch, then its class."""
        now = time.monotonic()
        queued = sum(
            self.costs.seconds(work.method.name, work.priority, work.remaining)
            for work in self._queues.queued(Priority.INTERACTIVE)
        )
        return max(0.0, self._busy_until - now) + queued

    async def close(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ensure_serving(self) -> asyncio.Event:
        """Start the serving loop on first use (in the caller's event loop)."""
        if self._serving is not None and self._serving.done():
            error = None if self._serving.cancelled() else self._serving.exception()
            raise RuntimeError(f"the model's scheduler has stopped ({error!r})")
        if self._wake is None or self._serving is None:
            self._wake = asyncio.Event()
            # A context of its own: not the first caller's (its request id, say), as it
            # serves every caller.
            self._serving = asyncio.get_running_loop().create_task(
                self._serve(self._wake), context=contextvars.Context()
            )
        return self._wake

    async def _serve(self, wake: asyncio.Event) -> None:
        last: Priority | None = None
        while True:
            self._report_depth()
            upcoming = self._queues.next_priority()
            if upcoming is None:
                wake.clear()
                await wake.wait()
                continue
            if last is Priority.INTERACTIVE and upcoming is not Priority.INTERACTIVE:
                last = None  # once per interactive batch: then bulk work goes on
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.slice_s)
                continue
            batch = self._queues.take(self._limit)
            self._report_depth()
            if batch is not None:
                await self._run(batch)
                last = batch.priority

    def _report_depth(self) -> None:
        if self.observer:
            for priority in Priority:
                self.observer.queued(priority, self._queues.depth(priority))

    def _limit(self, method: Method, priority: Priority) -> int:
        if priority is Priority.INTERACTIVE:
            return method.max_batch
        fits = self.costs.items_within(method.name, priority, self.current_slice_s())
        return min(method.max_batch, fits)

    def current_slice_s(self) -> float:
        """The bulk slice now: short while interactive requests are about, else longer."""
        recent = time.monotonic() - self._interactive_at < INTERACTIVE_WINDOW_S
        return self.slice_s if recent else self.slice_s * IDLE_SLICE_FACTOR

    async def _run(self, batch: Batch) -> None:
        method, priority = batch.method, batch.priority
        started = time.monotonic()
        if self.observer:
            for work, start, _ in batch.parts:
                if start == 0:
                    self.observer.waited(method.name, priority, started - work.enqueued)
        self._busy_until = started + self.costs.seconds(method.name, priority, batch.size)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: method.run(batch.inputs())
            )
            batch.deliver(outputs)
        except Exception as exc:  # the callers get the model's error; serving goes on
            batch.fail(exc)
        seconds = time.monotonic() - started
        self._busy_until = 0.0
        self.costs.observe(method.name, priority, batch.size, seconds)
        if self.observer:
            self.observer.ran(method.name, priority, batch.size, seconds)
