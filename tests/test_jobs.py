"""The job registry without servers: a job runs on its own after submission, reports the
progress its source gives, returns its result once, can be cancelled from another worker's
registry on the same file, waits while the model services are busy, and a job whose worker
is gone (its lease not renewed) reads as failed and no longer counts as unfinished."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from pydantic import BaseModel

from clip_service.errors import InvalidInput, Unavailable
from clip_service.server.jobs import GONE, JobNotDone, JobNotFound, JobRegistry, TooManyJobs


class Answer(BaseModel):
    text: str


def registry(tmp_path, **limits) -> JobRegistry:
    options = {"max_running": 2, "max_unfinished": 8, "ttl_s": 3600, "timeout_s": 30} | limits
    return JobRegistry(tmp_path / "jobs.sqlite3", **options)


async def no_progress(key: str) -> None:
    return None


async def wait_until_finished(jobs: JobRegistry, job_id: str) -> str:
    for _ in range(200):
        status = (await jobs.status(job_id, no_progress)).status
        if status in ("succeeded", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.01)
    raise AssertionError("the job did not finish")


def test_a_job_runs_reports_progress_and_keeps_its_result(tmp_path) -> None:
    async def main() -> None:
        jobs = registry(tmp_path)
        release = asyncio.Event()

        async def work(key: str) -> Answer:
            await release.wait()
            return Answer(text=f"done {key[:4]}")

        job = jobs.submit("interrogate", work)
        assert job.status == "queued" and job.progress.stage == "queued"
        await asyncio.sleep(0.01)

        async def at_step(key: str) -> tuple[int, int]:
            assert key == job.id
            return 3, 32

        running = await jobs.status(job.id, at_step)
        assert running.status == "running"
        assert (running.progress.stage, running.progress.step, running.progress.steps) == (
            "chain",
            3,
            32,
        )
        with pytest.raises(JobNotDone, match=r"^job: the job is running"):
            jobs.result(job.id)
        release.set()
        assert await wait_until_finished(jobs, job.id) == "succeeded"
        assert jobs.result(job.id) == {"text": f"done {job.id[:4]}"}
        assert (await jobs.status(job.id, at_step)).progress.stage == "done"

    asyncio.run(main())


def test_failures_are_the_jobs_answer(tmp_path) -> None:
    async def main() -> None:
        jobs = registry(tmp_path, timeout_s=0.05)

        async def refused(key: str) -> Answer:
            raise InvalidInput("image", "not a readable image")

        async def slow(key: str) -> Answer:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

        for work, error in ((refused, "image: not a readable image"), (slow, "timeout: not")):
            job = jobs.submit("interrogate", work)
            assert await wait_until_finished(jobs, job.id) == "failed"
            assert (await jobs.status(job.id, no_progress)).error.startswith(error)
            with pytest.raises(JobNotDone, match=f"^job: {error}"):
                jobs.result(job.id)
        with pytest.raises(JobNotFound):
            await jobs.status("0" * 32, no_progress)

    asyncio.run(main())


def test_a_cancel_through_another_workers_registry_stops_the_job(tmp_path) -> None:
    async def main() -> None:
        owner, other = registry(tmp_path), registry(tmp_path)
        stopped = asyncio.Event()

        async def endless(key: str) -> Answer:
            try:
                await asyncio.sleep(60)
            finally:
                stopped.set()
            raise AssertionError("not reached")

        job = owner.submit("interrogate", endless)
        await asyncio.sleep(0.01)
        other.cancel(job.id)  # only flags it: the job runs in the owner's loop
        await asyncio.wait_for(stopped.wait(), timeout=5)  # the owner's watcher acts
        assert await wait_until_finished(owner, job.id) == "cancelled"

    asyncio.run(main())


def test_too_many_unfinished_jobs_are_a_429(tmp_path) -> None:
    async def main() -> None:
        jobs = registry(tmp_path, max_unfinished=2)

        async def endless(key: str) -> Answer:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        first, _ = jobs.submit("a", endless), jobs.submit("b", endless)
        with pytest.raises(TooManyJobs) as refused:
            jobs.submit("c", endless)
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        jobs.cancel(first.id)
        await asyncio.sleep(0.01)
        jobs.submit("c", endless)  # a place freed

    asyncio.run(main())


def test_a_job_whose_worker_is_gone_reads_as_failed_finished_ones_survive(tmp_path) -> None:
    """What survives a restart: finished jobs and their results; running ones are failed
    (a worker that stops in order fails them itself; one that is killed cannot)."""
    script = f"""
import asyncio
import os
from pathlib import Path
from pydantic import BaseModel
from clip_service.server.jobs import JobRegistry

class Answer(BaseModel):
    text: str

async def main():
    jobs = JobRegistry(Path({str(tmp_path / "jobs.sqlite3")!r}), 2, 8, 3600, 30, lease_s=0.5)
    async def quick(key): return Answer(text="kept")
    async def endless(key): await asyncio.sleep(60)
    done = jobs.submit("a", quick)
    await asyncio.sleep(0.2)
    print(done.id, jobs.submit("b", endless).id, flush=True)
    await asyncio.sleep(0.1)
    os._exit(0)  # as a killed worker: nothing cleans up

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    done_id, running_id = out.stdout.split()

    async def main() -> None:
        jobs = registry(tmp_path, max_unfinished=1)
        assert jobs.result(done_id) == {"text": "kept"}
        while (await jobs.status(running_id, no_progress)).status == "running":
            await asyncio.sleep(0.05)  # until its lease (0.5 s) has run out
        lost = await jobs.status(running_id, no_progress)
        assert lost.status == "failed" and lost.error == GONE

        async def quick(key: str) -> Answer:
            return Answer(text="after")

        jobs.submit("c", quick)  # the lost job no longer holds the only place

    asyncio.run(main())


def test_a_lost_job_is_swept_at_start_without_being_polled(tmp_path) -> None:
    async def main() -> None:
        lost = registry(tmp_path, lease_s=0.0)

        async def endless(key: str) -> Answer:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        job = lost.submit("a", endless)
        lost._watcher.cancel()  # as a killed worker: its lease is never renewed
        fresh = registry(tmp_path, max_unfinished=1)  # a restart sweeps it at once
        (status,) = fresh.db.execute("select status from jobs where id = ?", (job.id,)).fetchone()
        assert status == "failed"

    asyncio.run(main())


def test_a_job_waits_while_the_model_services_are_busy(tmp_path) -> None:
    async def main() -> None:
        jobs = registry(tmp_path)
        tries = []

        async def busy_once(key: str) -> Answer:
            tries.append(key)
            if len(tries) == 1:
                raise Unavailable("busy: interrogations: queue full", retry_after_s=0)
            return Answer(text="done")

        job = jobs.submit("interrogate", busy_once)
        assert await wait_until_finished(jobs, job.id) == "succeeded"
        assert len(tries) == 2

    asyncio.run(main())
