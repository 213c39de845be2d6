"""Jobs: long work (a best-mode interrogation takes minutes on a CPU) submitted, polled for
its progress, fetched when done and cancellable, so no client or gateway has to hold a
request open for it.

Why not BentoML's ``@bentoml.task``: its tasks report no progress, cannot be cancelled on a
local server (the cancel route answers 400 and the work runs on), store each request's
headers (API keys) with it, and their database is deleted at every start.

Jobs live in a SQLite file that every entry worker shares (a poll may reach any worker);
the worker that accepted a job runs it as a task of its own event loop (not the request's:
the answer is sent at once) and writes its state there. Progress comes from the model
service running the work, asked when a client polls. A cancel from any worker sets a flag
that the running worker checks every second. A job runs for at most ``timeout_s``
(``JOB_TIMEOUT_S``), waiting its turn when the model services are busy. Finished jobs are
kept for ``ttl_s``, and survive a restart.

Liveness is a lease, not a process id: the worker running a job renews its lease every
second; a job whose lease has run out (``LEASE_S``: its worker was killed, or its host
went away) is failed by whichever worker sees it first, at start, every second, or on a
poll, and no longer counts against ``max_unfinished``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from clip_service.errors import NotFound, RequestError, Unavailable
from clip_service.server import deadlines

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")
# How often a worker renews its jobs' leases, looks for cancels of them and sweeps the rest.
WATCH_S = 1.0
# A job whose worker has not renewed its lease for this long is failed.
LEASE_S = 15.0
GONE = "the server restarted (or its worker stopped) while this job ran; submit it again"


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


_SCHEMA = """
create table if not exists jobs (
    id text primary key, kind text not null, status text not null, owner text not null,
    created real not null, updated real not null, result text, error text,
    cancel integer not null default 0, lease_until real not null default 0
)
"""
_UNFINISHED = "status in ('queued', 'running')"


class JobRegistry:
    """One entry worker's view of the shared jobs file."""

    def __init__(
        self,
        path: Path,
        max_running: int,
        max_unfinished: int,
        ttl_s: float,
        timeout_s: float,
        lease_s: float = LEASE_S,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma busy_timeout=5000")
        _migrate(self.db)
        self.max_unfinished, self.ttl_s, self.timeout_s = max_unfinished, ttl_s, timeout_s
        self.lease_s = lease_s
        self.slots = asyncio.Semaphore(max_running)
        self.tasks: dict[str, asyncio.Task] = {}
        self.owner = uuid.uuid4().hex  # this registry, for as long as it runs
        self._watcher: asyncio.Task | None = None
        self.sweep()

    def start(self) -> None:
        """Renew this worker's leases, act on cancels and sweep, every ``WATCH_S`` (in the
        serving event loop; also started by the first submission)."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def submit(self, kind: str, work: Work) -> JobStatus:
        """Accept a job (429 when too many are unfinished) and start it on this loop."""
        self.sweep()
        (unfinished,) = self.db.execute(f"select count(*) from jobs where {_UNFINISHED}").fetchone()
        if unfinished >= self.max_unfinished:
            raise TooManyJobs(
                f"jobs: {unfinished} unfinished, the limit; retry when some are done",
                {"Retry-After": "30"},
            )
        job_id, now = uuid.uuid4().hex, time.time()
        self.db.execute(
            "insert into jobs (id, kind, status, owner, created, updated, lease_until) "
            "values (?,?,?,?,?,?,?)",
            (job_id, kind, "queued", self.owner, now, now, now + self.lease_s),
        )
        task = asyncio.get_running_loop().create_task(self._run(job_id, work))
        task.add_done_callback(functools.partial(self._forget, job_id))
        self.tasks[job_id] = task
        self.start()
        return self._status(job_id)

    async def status(self, job_id: str, progress: ProgressSource) -> JobStatus:
        job = self._status(job_id)
        if job.status == "running":
            at = await progress(job_id)
            if at is not None:
                job.progress = Progress(stage="chain", step=at[0], steps=at[1])
        return job

    def result(self, job_id: str) -> dict[str, Any]:
        job = self._status(job_id)
        if job.status != "succeeded":
            message = job.error or f"the job is {job.status}; poll GET /jobs/{job_id}"
            raise JobNotDone(f"job: {message}")
        (result,) = self.db.execute("select result from jobs where id = ?", (job_id,)).fetchone()
        return json.loads(result)

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job (its worker stops it within a second)."""
        self._status(job_id)
        self.db.execute(f"update jobs set cancel = 1 where id = ? and {_UNFINISHED}", (job_id,))
        self._cancel_mine()
        return self._status(job_id)

    def sweep(self) -> None:
        """Fail the unfinished jobs whose lease has run out; forget expired finished ones."""
        now = time.time()
        self.db.execute(
            f"update jobs set status = 'failed', error = ?, updated = ? "
            f"where {_UNFINISHED} and lease_until < ?",
            (GONE, now, now),
        )
        self.db.execute(
            "delete from jobs where status in ('succeeded', 'failed', 'cancelled') and updated < ?",
            (now - self.ttl_s,),
        )

    async def _run(self, job_id: str, work: Work) -> None:
        try:
            async with self.slots:
                self._set(job_id, "running")
                async with deadlines.within(self.timeout_s):
                    result = await _when_not_busy(work, job_id)
            self._set(job_id, "succeeded", result=result.model_dump_json())
        except TimeoutError:
            self._set(job_id, "failed", error=f"timeout: not done within {self.timeout_s:g} s")
        except RequestError as exc:
            self._set(job_id, "failed", error=str(exc))
        except Exception as exc:
            self._set(job_id, "failed", error=f"internal error ({type(exc).__name__})")

    def _forget(self, job_id: str, task: asyncio.Task) -> None:
        """A job's task is done; cancelled (before or while it ran) by a client's cancel, or
        by the worker stopping."""
        self.tasks.pop(job_id, None)
        if task.cancelled():
            flagged = self.db.execute("select cancel from jobs where id = ?", (job_id,))
            if flagged.fetchone()[0]:
                self._set(job_id, "cancelled")
            else:
                self._set(job_id, "failed", error=GONE)

    async def _watch(self) -> None:
        while True:
            self.db.execute(
                f"update jobs set lease_until = ? where owner = ? and {_UNFINISHED}",
                (time.time() + self.lease_s, self.owner),
            )
            self._cancel_mine()
            self.sweep()
            await asyncio.sleep(WATCH_S)

    def _cancel_mine(self) -> None:
        flagged = self.db.execute(
            f"select id from jobs where cancel = 1 and owner = ? and {_UNFINISHED}",
            (self.owner,),
        ).fetchall()
        for (job_id,) in flagged:
            if task := self.tasks.get(job_id):
                task.cancel()

    def _set(
        self, job_id: str, status: State, result: str | None = None, error: str | None = None
    ) -> None:
        self.db.execute(
            "update jobs set status = ?, updated = ?, result = ?, error = ? where id = ?",
            (status, time.time(), result, error, job_id),
        )

    def _status(self, job_id: str) -> JobStatus:
        row = self.db.execute(
            "select kind, status, created, updated, error, lease_until from jobs where id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise JobNotFound(
                f"job: no job {job_id} (unknown, or finished over {self.ttl_s:g} s ago)"
            )
        kind, status, created, updated, error, lease_until = row
        if status not in FINISHED and lease_until < time.time():
            self._set(job_id, "failed", error=GONE)
            status, error = "failed", GONE
        stage = status if status in ("queued", "running") else "done"
        return JobStatus(
            id=job_id,
            kind=kind,
            status=status,
            progress=Progress(stage=stage),
            created_at=created,
            updated_at=updated,
            error=error,
        )


async def _when_not_busy(work: Work, job_id: str) -> BaseModel:
    """The job's work, tried again after the ``Retry-After`` it was given while the model
    services are busy or restarting (a job waits its turn; its own deadline bounds it)."""
    while True:
        try:
            return await work(job_id)
        except Unavailable as exc:
            await asyncio.sleep(exc.retry_after_s)


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table; a file from a version that tracked jobs by process id (no lease
    column) starts over: its unfinished jobs were lost with their workers anyway."""
    columns = {row[1] for row in db.execute("pragma table_info(jobs)")}
    if columns and "lease_until" not in columns:
        db.execute("drop table jobs")
    db.execute(_SCHEMA)
