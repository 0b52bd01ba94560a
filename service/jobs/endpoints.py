"""HTTP endpoints of jobs (API.md: Jobs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.catalog.schemas import Page
from service.db import Database
from service.deps import DatabaseDep, ReadSessionDep, SettingsDep, WorkspaceDep
from service.errors import API_PROBLEMS, NotFound, problem_responses
from service.jobs import service
from service.jobs.deps import KindsDep
from service.jobs.schemas import EstimateOut, JobCreate, JobOut
from service.jobs.tables import FINAL_STATUSES, JobRecord
from service.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/v1", tags=["jobs"], responses=API_PROBLEMS)

EVENT_POLL_SECONDS = 0.25
KEEP_ALIVE_SECONDS = 15.0

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("/jobs", status_code=202, response_model=JobOut,
             responses={200: {"model": EstimateOut,
                              "description": "dry_run=true: the estimate; nothing queued"},
                        **problem_responses(400, 404, 409)},
             summary="Queue an explanation job")
def create_job(
    body: JobCreate, response: Response, db: DatabaseDep, settings: SettingsDep,
    kinds: KindsDep, workspace: WorkspaceDep,
    dry_run: Annotated[bool, Query(description="Check and estimate only.")] = False,
    idempotency_key: Annotated[str | None, Header(
        max_length=255, description="Replays the first job for the same key and body "
        "within 24 h; the same key with another body is 409.")] = None,
) -> JobOut | JSONResponse:
    with db.session() as session:
        checked = service.check_job(session, settings, kinds, workspace.id, body)
    if dry_run:
        return JSONResponse(EstimateOut(estimate=checked.estimate).model_dump(mode="json"))
    job, replayed = service.enqueue_job(db, settings, workspace.id, checked,
                                        idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return service.job_out(job)


@router.get("/jobs", response_model=Page[JobOut], responses=problem_responses(400))
def list_jobs(session: ReadSessionDep, workspace: WorkspaceDep, status: Status | None = None,
              kind: str | None = None,
              limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
              cursor: str | None = None) -> Page[JobOut]:
    jobs, next_cursor = service.list_jobs(session, workspace.id, status=status, kind=kind,
                                          limit=limit, cursor=cursor)
    return Page[JobOut](items=[service.job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=problem_responses(404))
def get_job(job_id: str, session: ReadSessionDep, workspace: WorkspaceDep) -> JobOut:
    return service.job_out(service.get_job(session, workspace.id, job_id))


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "An event `job` with the Job JSON at every "
                                            "change; the stream ends when the job ends."},
                       **problem_responses(404)})
async def job_events(job_id: str, request: Request, db: DatabaseDep, workspace: WorkspaceDep
                     ) -> StreamingResponse:
    """Server-sent events of the job as it changes, ending when it ends."""
    await run_in_threadpool(_job_out, db, workspace.id, job_id)  # 404 before streaming

    async def stream() -> AsyncIterator[str]:
        last: str | None = None
        last_sent = time.monotonic()
        while not await request.is_disconnected():
            try:
                job = await run_in_threadpool(_job_out, db, workspace.id, job_id)
            except NotFound:  # deleted while watched
                return
            # The ETA changes with the clock alone: a new event when anything else does.
            current = job.model_dump_json(exclude={"eta_seconds"})
            if current != last:
                yield f"event: job\ndata: {job.model_dump_json()}\n\n"
                last, last_sent = current, time.monotonic()
                if job.status in FINAL_STATUSES:
                    return
            elif time.monotonic() - last_sent >= KEEP_ALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(EVENT_POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/jobs/{job_id}/cancel", response_model=JobOut,
             responses=problem_responses(404))
def cancel_job(job_id: str, db: DatabaseDep, workspace: WorkspaceDep) -> JobOut:
    return service.job_out(service.cancel_job(db, workspace.id, job_id))


@router.delete("/jobs/{job_id}", status_code=204, responses=problem_responses(404, 409))
def delete_job(job_id: str, db: DatabaseDep, workspace: WorkspaceDep) -> Response:
    service.delete_job(db, workspace.id, job_id)
    return Response(status_code=204)


def _job_out(db: Database, workspace_id: str, job_id: str) -> JobOut:
    with db.session() as session:
        job: JobRecord = service.get_job(session, workspace_id, job_id)
        return service.job_out(job)
