"""Jobs: long work (a best-mode interrogation takes minutes on a CPU) submitted, polled for
its progress, fetched when done and cancellable, so no client or gateway has to hold a
request open for it.

Why not BentoML's ``@bentoml.task``: its tasks report no progress, cannot be cancelled on a
local server (the cancel route answers 400 and the work runs on), store each request's
headers (API keys) with it, and their database is deleted at every start.

A job's state lives in a store every entry worker and replica shares (:mod:`clip_service.state`:
a SQLite file on one host, Redis across hosts), so a poll, result or cancel may reach any of
them. The worker that accepted a job runs it as a task of its own event loop (not the
request's: the answer is sent at once) and writes its state there. Progress comes from the
model service running the work. A cancel from any worker sets a flag that the running worker
checks every second. A job runs for at most ``timeout_s`` (``JOB_TIMEOUT_S``), waiting its
turn when the model services are busy. Finished jobs are kept for ``ttl_s``.

Liveness is a lease, not a process id: the worker running a job renews its lease every
second; a job whose lease has run out (``LEASE_S``: its worker was killed, or its host
went away) is failed by whichever worker sees it first, at start, every second, or on a
poll, and no longer counts against ``max_unfinished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from clip_service.errors import NotFound, RequestError, Unavailable
from clip_service.server import deadlines
from clip_service.state.job_store import GONE, JobStore, State

logger = logging.getLogger(__name__)

# How often a worker renews its jobs' leases, looks for cancels of them and sweeps the rest.
WATCH_S = 1.0
# A job whose worker has not renewed its lease for this long is failed.
LEASE_S = 15.0


class Progress(BaseModel):
    stage: str = Field(description="queued, running, chain (best and negative modes), done")
    step: int | None = Field(None, description="the chain step being computed")
    steps: int | None = Field(None, description="at most this many chain steps")


class JobStatus(BaseModel):
    id: str
    kind: str
    status: State
    progress: Progress
    created_at: float
    updated_at: float
    error: str | None = None


# The work of one job, given the key it reports progress under.
Work = Callable[[str], Awaitable[BaseModel]]
# How far a running job is, by its key (None when unknown).
ProgressSource = Callable[[str], Awaitable[tuple[int, int] | None]]


class JobNotFound(NotFound):
    pass


class JobNotDone(RequestError):
    status = 409


class TooManyJobs(RequestError):
    status = 429


class JobRegistry:
    """One entry worker's jobs, in the store every worker shares."""

    def __init__(
        self,
        store: JobStore,
        progress: ProgressSource,
        max_running: int,
        max_unfinished: int,
        timeout_s: float,
        lease_s: float = LEASE_S,
    ) -> None:
        self.store, self.progress = store, progress
        self.max_unfinished, self.timeout_s, self.lease_s = max_unfinished, timeout_s, lease_s
        self.slots = asyncio.Semaphore(max_running)
        self.tasks: dict[str, asyncio.Task] = {}
        self._watcher: asyncio.Task | None = None

    def start(self) -> None:
        """Renew this worker's leases, act on cancels and sweep, every ``WATCH_S`` (in the
        serving event loop; also started by the first submission)."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def submit(self, kind: str, work: Work) -> JobStatus:
        """Accept a job (429 when too many are unfinished) and start it on this loop."""
        await self.store.sweep()
        unfinished = await self.store.count_unfinished()
        if unfinished >= self.max_unfinished:
            raise TooManyJobs(
                f"jobs: {unfinished} unfinished, the limit; retry when some are done",
                {"Retry-After": "30"},
            )
        job_id = uuid.uuid4().hex
        await self.store.add(job_id, kind, self.lease_s)
        task = asyncio.get_running_loop().create_task(self._run(job_id, work))
        task.add_done_callback(lambda _: self.tasks.pop(job_id, None))
        self.tasks[job_id] = task
        self.start()
        return await self._status(job_id)

    async def status(self, job_id: str) -> JobStatus:
        job = await self._status(job_id)
        if job.status == "running":
            at = await self.progress(job_id)
            if at is not None:
                job.progress = Progress(stage="chain", step=at[0], steps=at[1])
        return job

    async def result(self, job_id: str) -> dict[str, Any]:
        job = await self._status(job_id)
        if job.status != "succeeded":
            message = job.error or f"the job is {job.status}; poll GET /jobs/{job_id}"
            raise JobNotDone(f"job: {message}")
        return json.loads(await self.store.result(job_id) or "null")

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job (its worker stops it within a second)."""
        await self._status(job_id)
        await self.store.request_cancel(job_id)
        if job_id in self.tasks:
            await self._stop(job_id)
        return await self._status(job_id)

    async def _stop(self, job_id: str) -> None:
        """Stop a job of this worker: cancelled, if a client asked (else a sweep has failed
        it already, and the write is ignored)."""
        if task := self.tasks.get(job_id):
            task.cancel()
        await self.store.update(job_id, "cancelled")

    async def _run(self, job_id: str, work: Work) -> None:
        try:
            async with self.slots:
                await self.store.update(job_id, "running")
                async with deadlines.within(self.timeout_s):
                    result = await _when_not_busy(work, job_id)
            await self._finish(job_id, "succeeded", result=result.model_dump_json())
        except TimeoutError:
            await self._finish(
                job_id, "failed", error=f"timeout: not done within {self.timeout_s:g} s"
            )
        except RequestError as exc:
            await self._finish(job_id, "failed", error=str(exc))
        except Exception as exc:
            await self._finish(job_id, "failed", error=f"internal error ({type(exc).__name__})")

    async def _finish(
        self, job_id: str, status: State, result: str | None = None, error: str | None = None
    ) -> None:
        """Write a job's end, again every second while the store is unreachable (the job
        keeps its place in ``tasks``, so its lease is renewed meanwhile)."""
        while True:
            try:
                await self.store.update(job_id, status, result, error)
                return
            except Unavailable as exc:
                logger.warning("job %s: its %s state not written yet: %s", job_id, status, exc)
                await asyncio.sleep(WATCH_S)

    async def stop(self) -> None:
        """The worker is stopping: its unfinished jobs end now, failed with :data:`GONE`
        (one try each; the lease fails any it could not write within ``LEASE_S``)."""
        for job_id, task in list(self.tasks.items()):
            task.cancel()
            with contextlib.suppress(Unavailable):
                await self.store.update(job_id, "failed", error=GONE)

    async def _watch(self) -> None:
        watcher = asyncio.current_task()
        while True:
            try:
                running = [job_id for job_id, task in self.tasks.items() if not task.done()]
                for job_id in await self.store.renew(running, self.lease_s):
                    await self._stop(job_id)
                await self.store.sweep()
            except Unavailable as exc:
                logger.warning("jobs: leases not renewed: %s", exc)
            if watcher is not None and watcher.cancelling():
                # The client absorbed a cancel that arrived during its call: stop anyway.
                raise asyncio.CancelledError
            await asyncio.sleep(WATCH_S)

    async def _status(self, job_id: str) -> JobStatus:
        await self.store.sweep()
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(
                f"job: no job {job_id} (unknown, or finished over {self.store.ttl_s:g} s ago)"
            )
        stage = job.status if job.status in ("queued", "running") else "done"
        return JobStatus(
            id=job_id,
            kind=job.kind,
            status=job.status,
            progress=Progress(stage=stage),
            created_at=job.created,
            updated_at=job.updated,
            error=job.error,
        )


async def _when_not_busy(work: Work, job_id: str) -> BaseModel:
    """The job's work, tried again after the ``Retry-After`` it was given while the model
    services are busy or restarting (a job waits its turn; its own deadline bounds it)."""
    while True:
        try:
            return await work(job_id)
        except Unavailable as exc:
            await asyncio.sleep(exc.retry_after_s)
