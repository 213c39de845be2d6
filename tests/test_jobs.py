"""The job registry without servers, on each store (the SQLite file; a real redis-server):
a job runs on its own after submission, reports the progress its source gives, returns its
result once, can be cancelled from another worker's registry on the same store, waits while
the model services are busy, and a job whose worker is gone (its lease not renewed) reads as
failed and no longer counts as unfinished."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from clip_service.errors import InvalidInput, Unavailable
from clip_service.server.jobs import JobNotDone, JobNotFound, JobRegistry, TooManyJobs
from clip_service.state.job_store import GONE
from clip_service.state.stores import job_state
from clip_service.testing.redis_server import redis_server
from tests.conftest import REPO


class Answer(BaseModel):
    text: str


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> str:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def where(request, tmp_path) -> str:
    """Where the store is: a SQLite file, or a Redis database emptied for the test."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite3")
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return url


async def no_progress(key: str) -> None:
    return None


def _store_args(where: str) -> tuple[str | None, Path]:
    """``job_state``'s (redis_url, jobs_db) for a Redis URL or a SQLite file."""
    return (where, Path()) if where.startswith("redis://") else (None, Path(where))


def registry(where: str, progress=no_progress, **limits) -> JobRegistry:
    """A worker's registry on the store at ``where`` (a Redis URL, or a SQLite file)."""
    store, _ = job_state(*_store_args(where), ttl_s=3600)
    options = {"max_running": 2, "max_unfinished": 8, "timeout_s": 30} | limits
    return JobRegistry(store, progress, **options)


async def wait_until_finished(jobs: JobRegistry, job_id: str) -> str:
    for _ in range(200):
        status = (await jobs.status(job_id)).status
        if status in ("succeeded", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.01)
    raise AssertionError("the job did not finish")


def test_a_job_runs_reports_progress_and_keeps_its_result(where) -> None:
    async def main() -> None:
        steps: dict[str, tuple[int, int]] = {}

        async def at_step(key: str) -> tuple[int, int]:
            return steps[key]

        jobs = registry(where, at_step)
        release = asyncio.Event()

        async def work(key: str) -> Answer:
            steps[key] = (3, 32)
            await release.wait()
            return Answer(text=f"done {key[:4]}")

        job = await jobs.submit("interrogate", work)
        assert job.status == "queued" and job.progress.stage == "queued"
        await asyncio.sleep(0.05)

        running = await jobs.status(job.id)
        assert running.status == "running"
        assert (running.progress.stage, running.progress.step, running.progress.steps) == (
            "chain",
            3,
            32,
        )
        with pytest.raises(JobNotDone, match=r"^job: the job is running"):
            await jobs.result(job.id)
        release.set()
        assert await wait_until_finished(jobs, job.id) == "succeeded"
        assert await jobs.result(job.id) == {"text": f"done {job.id[:4]}"}
        assert (await jobs.status(job.id)).progress.stage == "done"

    asyncio.run(main())


def test_failures_are_the_jobs_answer(where) -> None:
    async def main() -> None:
        jobs = registry(where, timeout_s=0.05)

        async def refused(key: str) -> Answer:
            raise InvalidInput("image", "not a readable image")

        async def slow(key: str) -> Answer:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

        for work, error in ((refused, "image: not a readable image"), (slow, "timeout: not")):
            job = await jobs.submit("interrogate", work)
            assert await wait_until_finished(jobs, job.id) == "failed"
            assert (await jobs.status(job.id)).error.startswith(error)
            with pytest.raises(JobNotDone, match=f"^job: {error}"):
                await jobs.result(job.id)
        with pytest.raises(JobNotFound):
            await jobs.status("0" * 32)

    asyncio.run(main())


def test_a_cancel_through_another_workers_registry_stops_the_job(where) -> None:
    async def main() -> None:
        owner, other = registry(where), registry(where)
        stopped = asyncio.Event()

        async def endless(key: str) -> Answer:
            try:
                await asyncio.sleep(60)
            finally:
                stopped.set()
            raise AssertionError("not reached")

        job = await owner.submit("interrogate", endless)
        await asyncio.sleep(0.01)
        await other.cancel(job.id)  # only flags it: the job runs in the owner's loop
        await asyncio.wait_for(stopped.wait(), timeout=5)  # the owner's watcher acts
        assert await wait_until_finished(owner, job.id) == "cancelled"

    asyncio.run(main())


def test_too_many_unfinished_jobs_are_a_429(where) -> None:
    async def main() -> None:
        jobs = registry(where, max_unfinished=2)

        async def endless(key: str) -> Answer:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        first, _ = await jobs.submit("a", endless), await jobs.submit("b", endless)
        with pytest.raises(TooManyJobs) as refused:
            await jobs.submit("c", endless)
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        await jobs.cancel(first.id)
        await asyncio.sleep(0.01)
        await jobs.submit("c", endless)  # a place freed

    asyncio.run(main())


def test_a_job_whose_worker_is_gone_reads_as_failed_finished_ones_survive(where) -> None:
    """What survives a restart: finished jobs and their results; running ones are failed
    (a worker that stops in order fails them itself; one that is killed cannot)."""
    script = f"""
import asyncio
import socket
import os
from pathlib import PosixPath  # the store arguments, as repr() writes them
from pydantic import BaseModel
from clip_service.server.jobs import JobRegistry
from clip_service.state.stores import job_state

class Answer(BaseModel):
    text: str

async def no_progress(key):
    return None

async def main():
    store, _ = job_state(*{_store_args(where)!r}, ttl_s=3600)
    jobs = JobRegistry(store, no_progress, 2, 8, 30, lease_s=0.5)
    async def quick(key): return Answer(text="kept")
    async def endless(key): await asyncio.sleep(60)
    done = await jobs.submit("a", quick)
    await asyncio.sleep(0.2)
    print(done.id, (await jobs.submit("b", endless)).id, flush=True)
    await asyncio.sleep(0.1)
    os._exit(0)  # as a killed worker: nothing cleans up

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    done_id, running_id = out.stdout.split()

    async def main() -> None:
        jobs = registry(where, max_unfinished=1)
        assert await jobs.result(done_id) == {"text": "kept"}
        while (await jobs.status(running_id)).status == "running":
            await asyncio.sleep(0.05)  # until its lease (0.5 s) has run out
        lost = await jobs.status(running_id)
        assert lost.status == "failed" and lost.error == GONE

        async def quick(key: str) -> Answer:
            return Answer(text="after")

        await jobs.submit("c", quick)  # the lost job no longer holds the only place

    asyncio.run(main())


def test_a_lost_job_is_swept_at_start_without_being_polled(where) -> None:
    async def main() -> None:
        lost = registry(where, lease_s=0.3)

        async def endless(key: str) -> Answer:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        job = await lost.submit("a", endless)
        lost._watcher.cancel()  # as a killed worker: its lease is never renewed
        await asyncio.sleep(0.5)
        fresh = registry(where, max_unfinished=1)
        fresh.start()  # a restarted worker's watcher sweeps it at once
        await asyncio.sleep(0.1)
        record = await fresh.store.get(job.id)
        assert (record.status, record.error) == ("failed", GONE)

    asyncio.run(main())


def test_a_job_waits_while_the_model_services_are_busy(where) -> None:
    async def main() -> None:
        jobs = registry(where)
        tries = []

        async def busy_once(key: str) -> Answer:
            tries.append(key)
            if len(tries) == 1:
                raise Unavailable("busy: interrogations: queue full", retry_after_s=0)
            return Answer(text="done")

        job = await jobs.submit("interrogate", busy_once)
        assert await wait_until_finished(jobs, job.id) == "succeeded"
        assert len(tries) == 2

    asyncio.run(main())


@pytest.mark.parametrize("failure", ["down", "refusing"])
def test_an_unavailable_redis_is_a_retryable_503_naming_the_store(failure, request) -> None:
    """Down (nothing listens) or refusing (here a database it does not have; protected
    mode, a wrong password or a full memory alike): a 503 to retry, never a 500."""
    if failure == "down":
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            url = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"
    else:
        url = request.getfixturevalue("redis_url").removesuffix("/0") + "/99"  # 16 exist

    async def main() -> None:
        jobs = registry(url)

        async def quick(key: str) -> Answer:
            return Answer(text="never")

        for call in (jobs.submit("a", quick), jobs.status("0" * 32), jobs.cancel("0" * 32)):
            with pytest.raises(Unavailable, match=r"state store \(Redis\) is unavailable") as e:
                await call
            assert e.value.status == 503 and e.value.headers["Retry-After"]

    asyncio.run(main())


def test_a_stopping_worker_fails_its_jobs_at_once(where) -> None:
    async def main() -> None:
        jobs, other = registry(where), registry(where)

        async def endless(key: str) -> Answer:
            await asyncio.sleep(60)
            raise AssertionError("not reached")

        job = await jobs.submit("a", endless)
        await asyncio.sleep(0.05)
        await jobs.stop()  # the service's shutdown hook
        lost = await other.status(job.id)  # long before its 15 s lease runs out
        assert (lost.status, lost.error) == ("failed", GONE)

    asyncio.run(main())
