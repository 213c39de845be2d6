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
that the running worker checks every second. Finished jobs are kept for ``ttl_s``, and
survive a restart; a job whose worker is gone (a restart, a crash) is reported failed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from clip_service.errors import NotFound, RequestError

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")
# How often a worker looks for cancels of its jobs and for expired ones.
WATCH_S = 1.0
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
    id text primary key, kind text not null, status text not null, owner integer not null,
    created real not null, updated real not null, result text, error text,
    cancel integer not null default 0
)
"""


class JobRegistry:
    """One entry worker's view of the shared jobs file."""

    def __init__(
        self, path: Path, max_running: int, max_unfinished: int, ttl_s: float, timeout_s: float
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma busy_timeout=5000")
        self.db.execute(_SCHEMA)
        self.max_unfinished, self.ttl_s, self.timeout_s = max_unfinished, ttl_s, timeout_s
        self.slots = asyncio.Semaphore(max_running)
        self.tasks: dict[str, asyncio.Task] = {}
        self.owner = os.getpid()
        self._watcher: asyncio.Task | None = None

    def submit(self, kind: str, work: Work) -> JobStatus:
        """Accept a job (429 when too many are unfinished) and start it on this loop."""
        (unfinished,) = self.db.execute(
            "select count(*) from jobs where status in ('queued', 'running')"
        ).fetchone()
        if unfinished >= self.max_unfinished:
            raise TooManyJobs(
                f"jobs: {unfinished} unfinished, the limit; retry when some are done",
                {"Retry-After": "30"},
            )
        job_id, now = uuid.uuid4().hex, time.time()
        self.db.execute(
            "insert into jobs (id, kind, status, owner, created, updated) values (?,?,?,?,?,?)",
            (job_id, kind, "queued", self.owner, now, now),
        )
        task = asyncio.get_running_loop().create_task(self._run(job_id, work))
        task.add_done_callback(functools.partial(self._forget, job_id))
        self.tasks[job_id] = task
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
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
        self.db.execute(
            "update jobs set cancel = 1 where id = ? and status in ('queued', 'running')",
            (job_id,),
        )
        self._cancel_mine()
        return self._status(job_id)

    async def _run(self, job_id: str, work: Work) -> None:
        try:
            async with self.slots:
                self._set(job_id, "running")
                async with asyncio.timeout(self.timeout_s):
                    result = await work(job_id)
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
        """Cancel this worker's jobs flagged by any worker; forget expired jobs."""
        while True:
            await asyncio.sleep(WATCH_S)
            self._cancel_mine()
            self.db.execute(
                "delete from jobs where status in ('succeeded', 'failed', 'cancelled') "
                "and updated < ?",
                (time.time() - self.ttl_s,),
            )

    def _cancel_mine(self) -> None:
        flagged = self.db.execute(
            "select id from jobs where cancel = 1 and owner = ? "
            "and status in ('queued', 'running')",
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
            "select kind, status, owner, created, updated, error from jobs where id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise JobNotFound(
                f"job: no job {job_id} (unknown, or finished over {self.ttl_s:g} s ago)"
            )
        kind, status, owner, created, updated, error = row
        if status not in FINISHED and not _alive(owner, self.owner, self.tasks, job_id):
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


def _alive(owner: int, me: int, mine: dict[str, asyncio.Task], job_id: str) -> bool:
    """Whether the worker that runs a job still does."""
    if owner == me:
        return job_id in mine
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
