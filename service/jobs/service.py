"""Creating, listing, cancelling and deleting jobs (the HTTP side of the queue).

Everything about a job is checked before it is queued: the kind exists, its params are
valid, the dataset and model exist in the workspace, and the kind's own ``check``
accepts them. The insert and its NOTIFY share one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.inspection import ModelInfo
from service.catalog.column_head import read_column_head
from service.catalog.service import get_dataset, get_model, register_in_use_check
from service.config import Settings
from service.db import Database, utcnow
from service.errors import Conflict, NotFound, Unprocessable
from service.ids import new_id
from service.jobs.local_wakeup import announce
from service.jobs.queue import immediate_session, notify_job_queued
from service.jobs.schemas import JobCreate, JobError, JobOut
from service.jobs.tables import (
    ACTIVE_STATUSES,
    CANCELLED,
    QUEUE_OF_DEVICE,
    QUEUED,
    RUNNING,
    JobRecord,
)
from service.pagination import paginate
from service.registry import CheckContext, DatasetInfo, JobKind, KindRegistry
from service.results.arrays import delete_arrays, format_bytes

log = logging.getLogger("tabxai.jobs")

IDEMPOTENCY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class CheckedJob:
    """A job request that passed every check, ready to queue."""

    body: JobCreate
    kind: JobKind[Any]
    params: BaseModel
    estimate: dict[str, Any]


def check_job(session: Session, settings: Settings, kinds: KindRegistry, workspace_id: str,
              body: JobCreate) -> CheckedJob:
    """Check a job request the way API.md asks (404 for ids, 422 for the rest), against
    the kinds the app registered."""
    kind = kinds.get(body.kind)
    if kind is None:
        raise Unprocessable(f"There is no job kind '{body.kind}'; the kinds are: "
                            f"{', '.join(kinds.names()) or 'none'}.", code="unknown_kind")
    params = _validate_params(kind, body.params)
    if body.model_id is None and kind.needs_model is True:
        raise Unprocessable(f"Jobs of kind {kind.name} need a model: send model_id.",
                            code="model_required")
    if body.model_id is not None and kind.needs_model is False:
        raise Unprocessable(f"Jobs of kind {kind.name} use no model: leave model_id out.",
                            code="model_not_used")
    record = get_dataset(session, workspace_id, body.dataset_id)
    dataset = DatasetInfo.of(record)
    model = None
    if body.model_id is not None:
        model = ModelInfo.from_dict(get_model(session, workspace_id, body.model_id).info)
    column_head = partial(read_column_head, session, record)
    context: CheckContext[Any] = CheckContext(
        params=params, device=body.device, dataset=dataset, model=model,
        model_id=body.model_id, job_memory_bytes=settings.job_memory_bytes,
        column_head=column_head)
    filled = kind.check(context)
    if filled is not None:
        params = filled
        context = CheckContext(params=params, device=body.device, dataset=dataset,
                               model=model, model_id=body.model_id,
                               job_memory_bytes=settings.job_memory_bytes,
                               column_head=column_head)
    estimate = kind.estimate(context)
    _check_result_size(kind, estimate, settings.max_result_bytes)
    return CheckedJob(body=body, kind=kind, params=params, estimate=estimate)


def _check_result_size(kind: JobKind[Any], estimate: dict[str, Any], limit: int) -> None:
    """Refuse a job whose estimated result is larger than a job may store."""
    size = estimate.get("result_bytes")
    if size is None or size <= limit:
        return
    by_array = estimate.get("result_bytes_by_array") or {}
    largest = max(by_array.items(), key=lambda item: item[1], default=None)
    part = (f", {largest[0]} alone {format_bytes(largest[1])}"
            if largest is not None and len(by_array) > 1 else "")
    raise Unprocessable(
        f"The result of this job would take about {format_bytes(size)} ({size:,} bytes"
        f"{part}), more than the {format_bytes(limit)} ({limit:,} bytes) one job may store "
        f"(TABXAI_MAX_RESULT_BYTES). Ask for less: {kind.result_advice}; or ask the "
        "operator to raise TABXAI_MAX_RESULT_BYTES.", code="result_too_large")


def enqueue_job(db: Database, settings: Settings, workspace_id: str, checked: CheckedJob,
                *, idempotency_key: str | None) -> tuple[JobRecord, bool]:
    """Queue a checked job; returns it and whether it is an earlier job replayed for the
    same Idempotency-Key and body (then nothing new is queued)."""
    request_hash = _request_hash(checked.body)
    body = checked.body
    with immediate_session(db) as session:
        if idempotency_key is not None:
            earlier = _earlier_job(session, workspace_id, idempotency_key, request_hash)
            if earlier is not None:
                return earlier, True
        job = JobRecord(
            id=new_id("job"), workspace_id=workspace_id, kind=checked.kind.name,
            status=QUEUED, queue=QUEUE_OF_DEVICE[body.device], priority=0,
            model_id=body.model_id, dataset_id=body.dataset_id,
            params=checked.params.model_dump(mode="json"), device=body.device,
            progress=0.0, stage=QUEUED, attempts=0, max_attempts=settings.max_attempts,
            estimate=checked.estimate, cancel_requested=False, run_after=utcnow(),
            idempotency_key=idempotency_key,
            request_hash=request_hash if idempotency_key else None, created_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:
            # Another request with the same key won the race; answer as it did.
            assert idempotency_key is not None
            earlier = _earlier_job(session, workspace_id, idempotency_key, request_hash)
            if earlier is None:
                raise
            return earlier, True
        notify_job_queued(session, job.queue)
    if db.is_sqlite:  # committed: wake this machine's idle workers (PostgreSQL: NOTIFY)
        announce(settings.data_dir)
    log.info("job queued", extra={"event": "job_queued", "job_id": job.id,
                                  "kind": job.kind, "queue": job.queue})
    return job, False


def get_job(session: Session, workspace_id: str, job_id: str) -> JobRecord:
    job = session.get(JobRecord, job_id)
    if job is None or job.workspace_id != workspace_id:
        raise NotFound(f"There is no job {job_id} in this workspace.", code="job_not_found")
    return job


def list_jobs(session: Session, workspace_id: str, *, status: str | None, kind: str | None,
              limit: int, cursor: str | None) -> tuple[list[JobRecord], str | None]:
    query = select(JobRecord).where(JobRecord.workspace_id == workspace_id)
    if status is not None:
        query = query.where(JobRecord.status == status)
    if kind is not None:
        query = query.where(JobRecord.kind == kind)
    return paginate(session, query, JobRecord.id, limit=limit, cursor=cursor)


def cancel_job(db: Database, workspace_id: str, job_id: str) -> JobRecord:
    """Cancel a queued job at once; ask a running one to stop at its next checkpoint;
    leave a finished one as it is."""
    with immediate_session(db) as session:
        job = _locked_job(session, workspace_id, job_id)
        if job.status == QUEUED:
            job.status, job.stage, job.finished_at = CANCELLED, "cancelled", utcnow()
        elif job.status == RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            job.stage = "cancelling"
        session.flush()
        return job


def delete_job(db: Database, workspace_id: str, job_id: str) -> None:
    """Delete a job that is not running, with its result, arrays and plots."""
    with immediate_session(db) as session:
        job = _locked_job(session, workspace_id, job_id)
        if job.status == RUNNING:
            raise Conflict(f"The job {job_id} is running; cancel it first (POST "
                           f"/v1/jobs/{job_id}/cancel) and delete it once it has stopped.",
                           code="job_running")
        delete_arrays(session, job_id)
        session.execute(delete(JobRecord).where(JobRecord.id == job_id))


def job_in_use_reason(session: Session, column: str, object_id: str) -> str | None:
    """Why a dataset or model must not be deleted now: a queued or running job uses it."""
    attribute = {"dataset_id": JobRecord.dataset_id, "model_id": JobRecord.model_id}[column]
    job = session.execute(
        select(JobRecord.id, JobRecord.status)
        .where(attribute == object_id, JobRecord.status.in_(ACTIVE_STATUSES)).limit(1)
    ).first()
    if job is None:
        return None
    noun = "dataset" if column == "dataset_id" else "model"
    return (f"The {noun} {object_id} is used by the {job.status} job {job.id}; cancel the "
            f"job or wait until it ends, then delete the {noun}.")


register_in_use_check(job_in_use_reason)


def job_out(job: JobRecord) -> JobOut:
    return JobOut(
        eta_seconds=eta_seconds(job, utcnow()),
        id=job.id, kind=job.kind, status=job.status,
        progress=job.progress, stage=job.stage, model_id=job.model_id,
        dataset_id=job.dataset_id, params=job.params, device=job.device,
        device_used=job.device_used,
        attempts=job.attempts, error=JobError(**job.error) if job.error else None,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        estimate=job.estimate, queue=job.queue, cancel_requested=job.cancel_requested,
    )


def eta_seconds(job: JobRecord, now: datetime) -> float | None:
    """Seconds until a running job is expected to end, from the time it has run and its
    overall progress (before any progress: what is left of its estimated seconds)."""
    if job.status != RUNNING or job.started_at is None:
        return None
    elapsed = max(0.0, (now - job.started_at).total_seconds())
    if job.progress > 0:
        return round(elapsed * (1.0 - min(1.0, job.progress)) / job.progress, 1)
    estimated = (job.estimate or {}).get("seconds")
    if isinstance(estimated, int | float):
        return round(max(0.0, float(estimated) - elapsed), 1)
    return None


def _validate_params(kind: JobKind[Any], params: dict[str, Any]) -> BaseModel:
    try:
        return kind.params_model.model_validate(params)
    except ValidationError as exc:
        errors = [{"loc": ["params", *(str(p) for p in err["loc"])], "msg": err["msg"],
                   "type": err["type"]} for err in exc.errors()]
        first = errors[0]
        where = ".".join(first["loc"])
        raise Unprocessable(f"{where}: {first['msg']}. Fix this parameter and send the "
                            "request again.", code="invalid_params", errors=errors) from exc


def _request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _earlier_job(session: Session, workspace_id: str, key: str, request_hash: str
                 ) -> JobRecord | None:
    """The job an Idempotency-Key already stands for, or None when it stands for none
    (a key older than the window is forgotten here, so it can be used again)."""
    job = session.scalar(select(JobRecord).where(JobRecord.workspace_id == workspace_id,
                                                 JobRecord.idempotency_key == key))
    if job is None:
        return None
    if job.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        job.idempotency_key = None
        session.flush()
        return None
    if job.request_hash != request_hash:
        raise Conflict(f"The Idempotency-Key '{key}' was used for job {job.id} with another "
                       "request body; use a new key for a new job.",
                       code="idempotency_key_reused")
    return job


def _locked_job(session: Session, workspace_id: str, job_id: str) -> JobRecord:
    job = session.scalar(select(JobRecord).where(JobRecord.id == job_id).with_for_update())
    if job is None or job.workspace_id != workspace_id:
        raise NotFound(f"There is no job {job_id} in this workspace.", code="job_not_found")
    return job
