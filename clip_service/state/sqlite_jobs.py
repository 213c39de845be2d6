"""Jobs in a SQLite file: the one-host store (``JOBS_DB``), shared by every entry worker of
the host, surviving restarts, needing no server.

One file per host: SQLite's locking does not work on network file systems, so replicas on
several hosts share jobs through Redis instead (:mod:`.redis_jobs`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection
from pathlib import Path

from clip_service.state.job_store import GONE, JobRecord, State

_SCHEMA = """
create table if not exists jobs (
    id text primary key, kind text not null, status text not null,
    created real not null, updated real not null, result text, error text,
    cancel integer not null default 0, lease_until real not null default 0
)
"""
_COLUMNS = {
    "id",
    "kind",
    "status",
    "created",
    "updated",
    "result",
    "error",
    "cancel",
    "lease_until",
}
_UNFINISHED = "status in ('queued', 'running')"


class SqliteJobStore:
    def __init__(self, path: Path, ttl_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma busy_timeout=5000")
        _migrate(self.db)
        self.ttl_s = ttl_s

    async def count_unfinished(self) -> int:
        return self.db.execute(f"select count(*) from jobs where {_UNFINISHED}").fetchone()[0]

    async def add(self, job_id: str, kind: str, lease_s: float) -> None:
        now = time.time()
        self.db.execute(
            "insert into jobs (id, kind, status, created, updated, lease_until) "
            "values (?,?,'queued',?,?,?)",
            (job_id, kind, now, now, now + lease_s),
        )

    async def get(self, job_id: str) -> JobRecord | None:
        row = self.db.execute(
            "select kind, status, created, updated, error, cancel from jobs where id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        kind, status, created, updated, error, cancel = row
        return JobRecord(job_id, kind, status, created, updated, error, bool(cancel))

    async def result(self, job_id: str) -> str | None:
        row = self.db.execute("select result from jobs where id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    async def update(
        self, job_id: str, status: State, result: str | None = None, error: str | None = None
    ) -> bool:
        cursor = self.db.execute(
            f"update jobs set status = ?, updated = ?, result = ?, error = ? "
            f"where id = ? and {_UNFINISHED}",
            (status, time.time(), result, error, job_id),
        )
        return cursor.rowcount == 1

    async def request_cancel(self, job_id: str) -> None:
        self.db.execute(f"update jobs set cancel = 1 where id = ? and {_UNFINISHED}", (job_id,))

    async def renew(self, job_ids: Collection[str], lease_s: float) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        self.db.execute(
            f"update jobs set lease_until = ? where id in ({marks}) and {_UNFINISHED}",
            (time.time() + lease_s, *ids),
        )
        keep = self.db.execute(
            f"select id from jobs where id in ({marks}) and {_UNFINISHED} and cancel = 0", ids
        ).fetchall()
        return set(ids) - {row[0] for row in keep}

    async def sweep(self) -> None:
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


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table; a file an earlier version wrote (other columns: jobs tracked by
    process id, or by owner) starts over. Its unfinished jobs died with that version's
    workers; its finished ones are dropped with them (they were kept for ``ttl_s`` only)."""
    columns = {row[1] for row in db.execute("pragma table_info(jobs)")}
    if columns and columns != _COLUMNS:
        db.execute("drop table jobs")
    db.execute(_SCHEMA)
