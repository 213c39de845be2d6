"""Which store holds the shared state: Redis when a URL is given, else the host's files."""

from __future__ import annotations

from pathlib import Path

from clip_service.state import redis_client
from clip_service.state.job_store import JobStore
from clip_service.state.progress import RedisProgress
from clip_service.state.redis_jobs import RedisJobStore
from clip_service.state.sqlite_jobs import SqliteJobStore


def job_state(
    redis_url: str | None, jobs_db: Path, ttl_s: float
) -> tuple[JobStore, RedisProgress | None]:
    """The job store, and where chains' progress is shared when it is (Redis: one client,
    so one connection pool, serves both). ``None``: progress is asked of the encoder."""
    if redis_url:
        client = redis_client.connect(redis_url)
        return RedisJobStore(client, ttl_s), RedisProgress(client)
    return SqliteJobStore(jobs_db, ttl_s), None
