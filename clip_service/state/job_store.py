"""What a job store keeps of each job, whichever store it is (:mod:`.sqlite_jobs` on one
host, :mod:`.redis_jobs` across hosts), and the rules every store follows:

* a job is unfinished (queued or running) until one finishing write; later writes to it
  are ignored, so a job failed by a sweep stays failed even if its worker wakes up;
* an unfinished job holds a lease its worker renews; one whose lease runs out (its worker
  was killed, or its host went away) is failed with :data:`GONE` by the next sweep;
* finished jobs are kept ``ttl_s`` seconds, then forgotten.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
UNFINISHED: tuple[State, ...] = ("queued", "running")
FINISHED: tuple[State, ...] = ("succeeded", "failed", "cancelled")
GONE = (
    "the server running this job stopped (killed, restarted or cut off) before it finished; "
    "submit it again"
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    status: State
    created: float
    updated: float
    error: str | None
    cancel: bool  # a client asked for it to stop


class JobStore(Protocol):
    ttl_s: float

    async def count_unfinished(self) -> int: ...

    async def add(self, job_id: str, kind: str, lease_s: float) -> None:
        """A new queued job, its lease running ``lease_s`` from now."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def result(self, job_id: str) -> str | None:
        """A succeeded job's answer (JSON)."""

    async def update(
        self, job_id: str, status: State, result: str | None = None, error: str | None = None
    ) -> bool:
        """Move an unfinished job to ``status``; False (and nothing written) when it is
        already finished or gone."""

    async def request_cancel(self, job_id: str) -> None:
        """Flag an unfinished job for its worker to stop."""

    async def renew(self, job_ids: Collection[str], lease_s: float) -> set[str]:
        """Extend the leases of a worker's running jobs; returns those it must stop: flagged
        for cancelling, or already finished (failed by a sweep) or gone."""

    async def sweep(self) -> None:
        """Fail the unfinished jobs whose lease ran out; forget finished ones past their ttl."""
