"""The jobs the ``/jobs/...`` routes submit: their state, their answer, their cancellation."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from clip_service.server.jobs import JobStatus
from clip_service.server.routes.common import EntryDep, guard

router = APIRouter(tags=["Jobs"])
NO_JOB = {404: {"description": "no such job (or finished over JOB_TTL_S ago)"}}


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=NO_JOB)
@guard
async def job_status(job_id: str, entry: EntryDep) -> JobStatus:
    """A job's state (queued, running, succeeded, failed, cancelled) and, while a best-mode
    chain runs, its step."""
    return await entry.jobs.status(job_id)


@router.get(
    "/jobs/{job_id}/result",
    responses={**NO_JOB, 409: {"description": "not done, or failed or cancelled"}},
)
@guard
async def job_result(job_id: str, entry: EntryDep) -> JSONResponse:
    """A finished job's answer, as its route would have given it; 409 until it is done."""
    return JSONResponse(await entry.jobs.result(job_id))


@router.delete("/jobs/{job_id}", response_model=JobStatus, responses=NO_JOB)
@guard
async def cancel_job(job_id: str, entry: EntryDep) -> JobStatus:
    """Cancel a queued or running job; a finished one is left as it is."""
    return await entry.jobs.cancel(job_id)
