"""HTTP endpoints of results: summary, arrays (pages and downloads), plots (API.md:
Results). They read what the job process stored (service.results); downloads stream one
stored chunk at a time; see service.results.arrays for the Parquet/CSV layouts."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from service.deps import DatabaseDep, ReadSessionDep, WorkspaceDep
from service.errors import API_PROBLEMS, Conflict, problem_responses
from service.jobs import plots
from service.jobs.deps import KindsDep
from service.jobs.service import get_job
from service.jobs.tables import CANCELLED, FAILED, SUCCEEDED, JobRecord
from service.registry import KindRegistry
from service.results import arrays
from service.results.tables import JobResult

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"],
                   responses={**API_PROBLEMS, **problem_responses(404, 409)})

MAX_PAGE_ROWS = arrays.MAX_PAGE_ROWS
DEFAULT_PAGE_ROWS = arrays.DEFAULT_PAGE_ROWS
MAX_PAGE_VALUES = arrays.MAX_PAGE_VALUES


class AxisOut(BaseModel):
    """One axis of a result array: its name, its size, and the labels of its entries
    (feature names, outputs, ...) when they have names; null for the rows of data."""

    name: str = Field(examples=["feature"])
    size: int
    labels: list[str] | None = Field(None, examples=[["age", "income"]])


class ArrayOut(BaseModel):
    """A result array. ``axes`` and ``labels`` (the names of the axes after the first,
    the labels of the last), ``dims`` (every axis, with its labels), ``nbytes`` and
    ``max_page_rows`` extend API.md."""

    name: str
    shape: list[int]
    dtype: str
    axes: list[str]
    labels: list[str] | None
    dims: list[AxisOut]
    nbytes: int = Field(description="Bytes of the values (the .npy download less its "
                                    "header).")
    max_page_rows: int = Field(description="Most rows a JSON page of this array holds "
                                           "(0: too wide for JSON pages; download it).")


class ArrayPage(BaseModel):
    name: str
    shape: list[int]
    offset: int
    limit: int
    rows: list[Any]


@router.get("/result", response_model=dict[str, Any])
def get_result(job_id: str, session: ReadSessionDep, workspace: WorkspaceDep) -> dict[str, Any]:
    """The result summary; it carries ``provenance``."""
    job = _succeeded_job(session, workspace.id, job_id)
    result = session.get(JobResult, job.id)
    assert result is not None, "a succeeded job has a result (same transaction)"
    return result.summary


@router.get("/result/arrays", response_model=list[ArrayOut])
def list_result_arrays(job_id: str, session: ReadSessionDep, workspace: WorkspaceDep
                       ) -> list[ArrayOut]:
    job = _succeeded_job(session, workspace.id, job_id)
    return [_array_out(meta) for meta in arrays.list_arrays(session, job.id)]


@router.get("/result/arrays/{name}.npy", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_npy(job_id: str, name: str, db: DatabaseDep, session: ReadSessionDep,
                 workspace: WorkspaceDep) -> StreamingResponse:
    """The array as a NumPy .npy file (``numpy.load`` reads it)."""
    meta = _array(session, workspace.id, job_id, name)
    stream = arrays.npy_stream(db, meta)
    first = next(stream)  # the header, whose length the Content-Length needs
    size = len(first) + math.prod(meta.shape) * np.dtype(meta.dtype).itemsize

    def body() -> Any:
        yield first
        yield from stream

    return StreamingResponse(body(), media_type="application/octet-stream",
                             headers=_attachment(job_id, name, "npy", size))


@router.get("/result/arrays/{name}.parquet", response_class=StreamingResponse,
            responses={200: {"content": {"application/vnd.apache.parquet": {}}}})
def download_parquet(job_id: str, name: str, db: DatabaseDep, session: ReadSessionDep,
                     workspace: WorkspaceDep) -> StreamingResponse:
    """The array as Parquet: 1-D and 2-D wide, 3-D and 4-D in long form."""
    meta = _array(session, workspace.id, job_id, name)
    return StreamingResponse(arrays.parquet_stream(db, meta),
                             media_type="application/vnd.apache.parquet",
                             headers=_attachment(job_id, name, "parquet"))


@router.get("/result/arrays/{name}.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def download_csv(job_id: str, name: str, db: DatabaseDep, session: ReadSessionDep,
                 workspace: WorkspaceDep) -> StreamingResponse:
    """The array as CSV with a header row, in the same layout as Parquet."""
    meta = _array(session, workspace.id, job_id, name)
    return StreamingResponse(arrays.csv_stream(db, meta), media_type="text/csv",
                             headers=_attachment(job_id, name, "csv"))


@router.get("/result/arrays/{name}", response_model=ArrayPage)
def array_page(job_id: str, name: str, db: DatabaseDep, session: ReadSessionDep,
               workspace: WorkspaceDep, offset: Annotated[int, Query(ge=0)] = 0,
               limit: Annotated[int | None, Query(
                   ge=1, le=MAX_PAGE_ROWS, description=f"Rows; default {DEFAULT_PAGE_ROWS}, "
                   f"at most {MAX_PAGE_ROWS:,} and at most {MAX_PAGE_VALUES:,} values "
                   "(see the array's max_page_rows).")] = None) -> ArrayPage:
    """Rows ``offset .. offset+limit`` as JSON (NaN as null; float32 values in their
    shortest decimal form)."""
    meta = _array(session, workspace.id, job_id, name)
    limit = arrays.page_limit(meta, limit, download=f"/v1/jobs/{job_id}/result/arrays/{name}")
    rows = arrays.read_rows(db, meta, offset=offset, limit=limit)
    return ArrayPage(name=meta.name, shape=list(meta.shape), offset=offset, limit=limit,
                     rows=_json_rows(rows))


@router.get("/plots", response_model=list[str])
def list_plots(job_id: str, session: ReadSessionDep, kinds: KindsDep,
               workspace: WorkspaceDep) -> list[str]:
    """Names of the plots this result offers."""
    job = _succeeded_job(session, workspace.id, job_id)
    return plots.plot_names(kinds.get(job.kind), _summary(session, job))


@router.get("/plots/{name}.svg", response_class=Response,
            responses={200: {"content": {"image/svg+xml": {}}}})
def plot_svg(job_id: str, name: str, request: Request, db: DatabaseDep, session: ReadSessionDep,
             kinds: KindsDep, workspace: WorkspaceDep) -> Response:
    """The plot as SVG; query parameters are the plot's options (e.g. ``?pair=a,b``)."""
    return _plot(job_id, name, "svg", request, db, session, kinds, workspace.id)


@router.get("/plots/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def plot_png(job_id: str, name: str, request: Request, db: DatabaseDep, session: ReadSessionDep,
             kinds: KindsDep, workspace: WorkspaceDep) -> Response:
    """The plot as PNG; query parameters are the plot's options."""
    return _plot(job_id, name, "png", request, db, session, kinds, workspace.id)


def _plot(job_id: str, name: str, image_format: plots.ImageFormat, request: Request,
          db: DatabaseDep, session: Session, kinds: KindRegistry, workspace_id: str
          ) -> Response:
    job = _succeeded_job(session, workspace_id, job_id)
    content = plots.render_plot(db, job_id=job.id, kind=kinds.get(job.kind), kind_name=job.kind,
                                summary=_summary(session, job), name=name,
                                image_format=image_format, query=dict(request.query_params))
    return Response(content, media_type=plots.MEDIA_TYPES[image_format])


def _succeeded_job(session: Session, workspace_id: str, job_id: str) -> JobRecord:
    """The job, when it has succeeded; otherwise a 409 that says why it has no result."""
    job = get_job(session, workspace_id, job_id)
    if job.status == SUCCEEDED:
        return job
    ended = _timestamp(job.finished_at)
    if job.status == CANCELLED:
        raise Conflict(f"The job {job_id} was cancelled{ended}, so it has no result. "
                       "Submit it again (POST /v1/jobs, with a new Idempotency-Key if you "
                       "use one) to run it anew.",
                       code="job_cancelled")
    if job.status == FAILED:
        error = job.error or {}
        code = error.get("code") or "an unknown error"
        raise Conflict(f"The job {job_id} failed{ended} with {code}, so it has no result: "
                       f"{error.get('message') or 'no reason was recorded.'}",
                       code="job_failed")
    raise Conflict(f"The job {job_id} is {job.status} ({job.progress:.0%}); its result is "
                   f"ready once it has succeeded. Follow GET /v1/jobs/{job_id}/events.",
                   code="result_not_ready")


def _timestamp(moment: datetime | None) -> str:
    return f" at {moment.isoformat().replace('+00:00', 'Z')}" if moment else ""


def _summary(session: Session, job: JobRecord) -> dict[str, Any]:
    result = session.get(JobResult, job.id)
    return result.summary if result is not None else {}


def _array(session: Session, workspace_id: str, job_id: str, name: str) -> arrays.ArrayMeta:
    job = _succeeded_job(session, workspace_id, job_id)
    return arrays.get_array(session, job.id, name)


def _array_out(meta: arrays.ArrayMeta) -> ArrayOut:
    return ArrayOut(name=meta.name, shape=list(meta.shape), dtype=meta.dtype,
                    axes=list(meta.axes), labels=list(meta.labels) if meta.labels else None,
                    dims=[AxisOut(name=axis.name, size=size,
                                  labels=list(axis.labels) if axis.labels is not None else None)
                          for axis, size in zip(meta.dims, meta.shape, strict=True)],
                    nbytes=meta.nbytes, max_page_rows=arrays.max_page_rows(meta))


def _attachment(job_id: str, name: str, suffix: str, size: int | None = None
                ) -> dict[str, str]:
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{name}.{suffix}"'}
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


def _json_rows(rows: np.ndarray) -> list[Any]:
    if rows.dtype.kind in "iu":
        return rows.tolist()
    # str() of a float32 is its shortest round-trip form (0.1, not 0.10000000149...).
    flat = [None if v != v or v in (np.inf, -np.inf) else float(str(v))
            for v in rows.reshape(-1)]
    return np.array(flat, dtype=object).reshape(rows.shape).tolist()
