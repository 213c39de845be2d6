"""Which store holds the shared state: Redis when a URL is given, else the host's files."""

from __future__ import annotations

from pathlib import Path

from clip_service.state import redis_client
from clip_service.state.job_store import JobStore
from clip_service.state.redis_jobs import RedisJobStore
from clip_service.state.sqlite_jobs import SqliteJobStore


def job_store(redis_url: str | None, jobs_db: Path, ttl_s: float) -> JobStore:
    if redis_url:
        return RedisJobStore(redis_client.connect(redis_url), ttl_s)
    return SqliteJobStore(jobs_db, ttl_s)
