"""Every statement that moves a job through the queue: claim, heartbeat, fence, finish.

The claim is one ``UPDATE jobs ... WHERE id = (SELECT id ... FOR UPDATE SKIP LOCKED
LIMIT 1) RETURNING ...``: on PostgreSQL concurrent workers skip each other's rows; on
SQLite (which renders no FOR UPDATE) the statement runs inside ``BEGIN IMMEDIATE``, so
claims are serialized by the database's write lock. Times are the workers' clocks (UTC);
machines sharing a database must keep them in step (NTP), to well within a lease.

A claim hands out a :class:`Lease` whose ``owner`` token is fresh for every claim. Every
later write on behalf of the job (array chunks, the result, the final status) runs in a
:func:`fenced_transaction`, which locks the job row and proceeds only while the job is
``running`` under that token: a worker that lost its lease writes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, case, or_, select, text, update
from sqlalchemy.orm import Session

from service.db import Database, utcnow
from service.jobs.tables import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord
from service.results.arrays import ArrayMeta, commit_arrays, discard_chunks
from service.results.tables import JobResult

log = logging.getLogger("tabxai.jobs.queue")

NOTIFY_CHANNEL = "tabxai_jobs"
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0

_jobs = cast(Table, JobRecord.__table__)


class LeaseLost(Exception):
    """The job is no longer running under this lease (expired and claimed by another
    worker, cancelled and reaped, or deleted); the holder must stop and write nothing."""


@dataclass(frozen=True)
class Lease:
    """A claimed job, as the worker that claimed it sees it."""

    job_id: str
    owner: str
    attempt: int
    max_attempts: int
    kind: str
    params: dict[str, Any]
    device: str
    queue: str
    workspace_id: str
    model_id: str | None
    dataset_id: str | None


@contextmanager
def immediate_session(db: Database) -> Iterator[Session]:
    """A session for read-then-write work: on SQLite its transaction starts with
    ``BEGIN IMMEDIATE`` so that no other writer slips in between the read and the write
    (PostgreSQL callers lock rows with FOR UPDATE instead)."""
    with db.session() as session:
        if db.is_sqlite:
            session.connection(execution_options={"sqlite_immediate": True})
        yield session


def notify_job_queued(session: Session, queue: str) -> None:
    """Wake listening workers when the session's transaction commits (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :queue)"),
                        {"channel": NOTIFY_CHANNEL, "queue": queue})


def claim_next_job(db: Database, *, worker: str, queues: Sequence[str], kinds: Sequence[str],
                   prefer_gpu: bool, lease_seconds: float) -> Lease | None:
    """Claim the next runnable job of ``queues`` and ``kinds`` (those the worker can run),
    or return None when there is none.

    Runnable: queued and due (``run_after`` passed), or running under a lease that
    expired (its worker died) with attempts left and no cancel requested. Order: the
    ``gpu`` queue first when ``prefer_gpu``, then priority, then age.
    """
    now = utcnow()
    runnable = or_(
        and_(_jobs.c.status == QUEUED, _jobs.c.run_after <= now),
        and_(_jobs.c.status == RUNNING, _jobs.c.lease_expires_at < now,
             _jobs.c.attempts < _jobs.c.max_attempts, _jobs.c.cancel_requested.is_(False)),
    )
    order = [case((_jobs.c.queue == "gpu", 0), else_=1)] if prefer_gpu else []
    pick = (
        select(_jobs.c.id)
        .where(_jobs.c.queue.in_(list(queues)), _jobs.c.kind.in_(list(kinds)), runnable)
        .order_by(*order, _jobs.c.priority, _jobs.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    owner = f"{worker}/{secrets.token_hex(6)}"
    statement = (
        update(_jobs)
        .where(_jobs.c.id == pick)
        .values(status=RUNNING, lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=_jobs.c.attempts + 1, started_at=now, progress=0.0,
                stage="starting", error=None)
        .returning(_jobs.c.id, _jobs.c.attempts, _jobs.c.max_attempts, _jobs.c.kind,
                   _jobs.c.params, _jobs.c.device, _jobs.c.queue, _jobs.c.workspace_id,
                   _jobs.c.model_id, _jobs.c.dataset_id)
    )
    with immediate_session(db) as session:
        row = session.execute(statement).first()
    if row is None:
        return None
    lease = Lease(job_id=row.id, owner=owner, attempt=row.attempts,
                  max_attempts=row.max_attempts, kind=row.kind, params=row.params,
                  device=row.device, queue=row.queue, workspace_id=row.workspace_id,
                  model_id=row.model_id, dataset_id=row.dataset_id)
    log.info("job claimed", extra={"event": "job_claimed", "job_id": lease.job_id,
                                   "owner": owner, "attempt": lease.attempt})
    return lease


def heartbeat(db: Database, lease: Lease, *, lease_seconds: float,
              progress: float | None = None, stage: str | None = None) -> bool:
    """Extend the lease and record progress; return whether a cancel was requested.

    Raises LeaseLost when the job is no longer running under this lease.
    """
    values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    if progress is not None:
        values["progress"] = min(1.0, max(0.0, float(progress)))
    if stage is not None:
        values["stage"] = stage[:200]
    with db.session() as session:
        cancel = session.execute(
            update(_jobs).where(*_held(lease)).values(**values)
            .returning(_jobs.c.cancel_requested)
        ).scalar()
    if cancel is None:
        raise LeaseLost(lease.job_id)
    return bool(cancel)


@contextmanager
def fenced_transaction(db: Database, lease: Lease) -> Iterator[Session]:
    """A transaction that holds the job row locked and runs only under ``lease``.

    Raises LeaseLost (rolling back everything) when the job is no longer running under
    this lease. The row lock orders it against the other writers of the job: another
    worker's claim, a cancel, a delete, the reaper.
    """
    with immediate_session(db) as session:
        held = session.execute(
            select(_jobs.c.id).where(*_held(lease)).with_for_update()
        ).first()
        if held is None:
            raise LeaseLost(lease.job_id)
        yield session


def complete_job(db: Database, lease: Lease, *, summary: dict[str, Any],
                 arrays: Sequence[ArrayMeta], device_used: str) -> None:
    """Store the result and mark the job succeeded, all in one fenced transaction."""
    with fenced_transaction(db, lease) as session:
        session.add(JobResult(job_id=lease.job_id, summary=summary))
        session.flush()
        commit_arrays(session, lease.job_id, arrays)
        _finish(session, lease, status=SUCCEEDED, stage="done", progress=1.0,
                device_used=device_used)


def fail_job(db: Database, lease: Lease, *, code: str, message: str) -> None:
    with fenced_transaction(db, lease) as session:
        discard_chunks(session, lease.job_id)
        _finish(session, lease, status=FAILED, stage="failed",
                error={"code": code, "message": message})


def cancel_job_run(db: Database, lease: Lease) -> None:
    """End a running job that stopped at a checkpoint after a cancel request."""
    with fenced_transaction(db, lease) as session:
        discard_chunks(session, lease.job_id)
        _finish(session, lease, status=CANCELLED, stage="cancelled")


def retry_job(db: Database, lease: Lease, *, reason: str) -> bool:
    """After an infrastructure error: queue the job again after a backoff, or fail it
    with ``internal_error`` when it has no attempts left. Returns whether it will rerun.
    """
    if lease.attempt >= lease.max_attempts:
        fail_job(db, lease, code="internal_error", message=(
            f"The job failed {lease.attempt} times on an internal error ({reason}); the "
            "error was logged for the operator. Try again later, and report it if it "
            "persists."))
        return False
    delay = backoff_seconds(lease.attempt)
    with fenced_transaction(db, lease) as session:
        discard_chunks(session, lease.job_id)
        if _cancel_requested(session, lease):
            _finish(session, lease, status=CANCELLED, stage="cancelled")
            return False
        _requeue(session, lease, run_after_seconds=delay, stage="waiting to retry")
    return True


def release_job(db: Database, lease: Lease) -> None:
    """Give a job back unfinished (worker shutting down): queued again at once, and the
    attempt is not counted."""
    with fenced_transaction(db, lease) as session:
        discard_chunks(session, lease.job_id)
        if _cancel_requested(session, lease):
            _finish(session, lease, status=CANCELLED, stage="cancelled")
            return
        _requeue(session, lease, run_after_seconds=0.0, stage=QUEUED, uncount=True)
        notify_job_queued(session, lease.queue)


def discard_stale_chunks(db: Database, lease: Lease) -> int:
    """Remove array chunks left by earlier attempts of a job just claimed."""
    with fenced_transaction(db, lease) as session:
        return discard_chunks(session, lease.job_id)


def reap_expired_jobs(db: Database) -> int:
    """End running jobs whose lease expired and that must not run again: cancelled ones
    become ``cancelled``, those out of attempts fail with ``worker_lost``."""
    now = utcnow()
    ended = 0
    with immediate_session(db) as session:
        rows = session.execute(
            select(_jobs.c.id, _jobs.c.attempts, _jobs.c.cancel_requested)
            .where(_jobs.c.status == RUNNING, _jobs.c.lease_expires_at < now,
                   or_(_jobs.c.cancel_requested.is_(True),
                       _jobs.c.attempts >= _jobs.c.max_attempts))
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            discard_chunks(session, row.id)
            values: dict[str, Any]
            if row.cancel_requested:
                values = {"status": CANCELLED, "stage": "cancelled"}
            else:
                values = {"status": FAILED, "stage": "failed", "error": {
                    "code": "worker_lost",
                    "message": f"The worker running this job stopped responding "
                               f"{row.attempts} times (it was killed, ran out of memory or "
                               "lost its database), so the job was given up. Try again, "
                               "with fewer rows if it is large; the operator can check "
                               "the workers' logs."}}
            session.execute(update(_jobs).where(_jobs.c.id == row.id)
                            .values(**values, finished_at=now, lease_expires_at=None))
            ended += 1
    if ended:
        log.warning("expired jobs ended", extra={"event": "jobs_reaped", "count": ended})
    return ended


def backoff_seconds(attempt: int) -> float:
    """Delay before retry ``attempt + 1``: 2 s, 4 s, 8 s, ... at most 5 minutes."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1)))


def _held(lease: Lease) -> tuple[Any, ...]:
    return (_jobs.c.id == lease.job_id, _jobs.c.lease_owner == lease.owner,
            _jobs.c.status == RUNNING)


def _cancel_requested(session: Session, lease: Lease) -> bool:
    return bool(session.scalar(select(_jobs.c.cancel_requested).where(*_held(lease))))


def _finish(session: Session, lease: Lease, *, status: str, stage: str,
            progress: float | None = None, error: dict[str, str] | None = None,
            device_used: str | None = None) -> None:
    values: dict[str, Any] = {"status": status, "stage": stage, "error": error,
                              "finished_at": utcnow(), "lease_expires_at": None}
    if progress is not None:
        values["progress"] = progress
    if device_used is not None:
        values["device_used"] = device_used
    _update_held(session, lease, values)
    log.info("job finished", extra={"event": "job_finished", "job_id": lease.job_id,
                                    "status": status, "attempt": lease.attempt})


def _requeue(session: Session, lease: Lease, *, run_after_seconds: float, stage: str,
             uncount: bool = False) -> None:
    values: dict[str, Any] = {
        "status": QUEUED, "stage": stage, "progress": 0.0, "lease_owner": None,
        "lease_expires_at": None,
        "run_after": utcnow() + timedelta(seconds=run_after_seconds),
    }
    if uncount:
        values["attempts"] = _jobs.c.attempts - 1
    _update_held(session, lease, values)


def _update_held(session: Session, lease: Lease, values: dict[str, Any]) -> None:
    # The row is locked by fenced_transaction; the WHERE re-checks the lease anyway, so
    # that a write can never land on a job this lease does not hold.
    result = session.execute(update(_jobs).where(*_held(lease)).values(**values))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(lease.job_id)
