"""Queue semantics on the real databases: claim, queues, fencing, recovery, retry."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.config import Settings
from service.db import Database, utcnow
from service.jobs.queue import (
    LeaseLost,
    claim_next_job,
    complete_job,
    fenced_transaction,
    heartbeat,
    reap_expired_jobs,
    release_job,
    retry_job,
)
from service.jobs.tables import JobRecord
from service.results.arrays import ArrayWriter
from service.results.tables import ArrayChunk, JobResult
from service.tables import Blob
from tests.service.jobs_testkinds import job_row, post_job, upload_dataset

KINDS = ["test_sleep", "test_count", "test_fail"]


def _claim(db: Database, worker: str = "w", queues: tuple[str, ...] = ("cpu", "any"),
           prefer_gpu: bool = False, lease_seconds: float = 30.0):  # type: ignore[no-untyped-def]
    return claim_next_job(db, worker=worker, queues=queues, kinds=KINDS,
                          prefer_gpu=prefer_gpu, lease_seconds=lease_seconds)


def _expire(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(update(JobRecord).where(JobRecord.id == job_id)
                        .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def _count(db: Database, model: type, **where: str) -> int:
    with db.session() as session:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return int(session.scalar(query) or 0)


def test_claim_sets_the_lease_and_counts_the_attempt(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    assert _claim(db) is None
    first = post_job(client, "test_sleep", dataset_id, steps=2)["id"]
    second = post_job(client, "test_sleep", dataset_id)["id"]
    lease = _claim(db, worker="w1")
    assert lease is not None and lease.job_id == first and lease.attempt == 1
    assert lease.params == {"steps": 2, "step_seconds": 0.05, "chunk_rows": 4}
    job = job_row(db, first)
    assert job.status == "running" and job.lease_owner == lease.owner
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert job.started_at is not None and job.attempts == 1
    again = _claim(db, worker="w2")
    assert again is not None and again.job_id == second and again.owner != lease.owner
    assert _claim(db) is None


def test_queues_follow_the_device(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    ids = {}
    for device in ("cuda", "cpu", "auto"):
        ids[device] = client.post("/v1/jobs", json={
            "kind": "test_sleep", "dataset_id": dataset_id, "device": device}).json()["id"]
    cpu_claims = [_claim(db), _claim(db), _claim(db)]
    assert {lease.job_id for lease in cpu_claims if lease} == {ids["cpu"], ids["auto"]}
    assert cpu_claims[2] is None, "a CPU worker never takes cuda jobs"
    gpu = _claim(db, queues=("gpu", "any", "cpu"), prefer_gpu=True)
    assert gpu is not None and gpu.job_id == ids["cuda"] and gpu.device == "cuda"


def test_gpu_worker_takes_gpu_jobs_first(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    auto = client.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": dataset_id,
                                         "device": "auto"}).json()["id"]
    cuda = client.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": dataset_id,
                                         "device": "cuda"}).json()["id"]
    order = [_claim(db, queues=("gpu", "any", "cpu"), prefer_gpu=True) for _ in range(2)]
    assert [lease.job_id for lease in order if lease] == [cuda, auto]


def test_a_stale_worker_cannot_write_its_result(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    stale = _claim(db, worker="stale")
    assert stale is not None
    writer = ArrayWriter(lambda: fenced_transaction(db, stale), job_id=job_id,
                         owner=stale.owner, name="values", dtype="float32", row_shape=(2,))
    writer.append(np.ones((70_000, 2)))  # one full chunk written under the stale lease
    assert _count(db, ArrayChunk, job_id=job_id) == 1
    _expire(db, job_id)
    fresh = _claim(db, worker="fresh")
    assert fresh is not None and fresh.job_id == job_id and fresh.attempt == 2

    with pytest.raises(LeaseLost):
        writer.append(np.ones((70_000, 2)))
    with pytest.raises(LeaseLost):
        complete_job(db, stale, summary={"by": "stale"}, arrays=[writer.close()],
                     device_used="cpu")
    with pytest.raises(LeaseLost):
        heartbeat(db, stale, lease_seconds=30)
    assert _count(db, JobResult, job_id=job_id) == 0
    assert job_row(db, job_id).status == "running"

    mine = ArrayWriter(lambda: fenced_transaction(db, fresh), job_id=job_id,
                       owner=fresh.owner, name="values", dtype="float32", row_shape=(2,))
    mine.append(np.zeros((3, 2)))
    complete_job(db, fresh, summary={"by": "fresh"}, arrays=[mine.close()],
                 device_used="cpu")
    job = job_row(db, job_id)
    assert job.status == "succeeded" and job.attempts == 2 and job.device_used == "cpu"
    with db.session() as session:
        assert session.get(JobResult, job_id).summary == {"by": "fresh"}  # type: ignore[union-attr]
        owners = set(session.scalars(select(ArrayChunk.owner)
                                     .where(ArrayChunk.job_id == job_id)))
    assert owners == {fresh.owner}, "the stale attempt's chunks are gone"


def test_expired_jobs_are_reclaimed_then_given_up(client: TestClient, db: Database,
                                                  settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    for attempt in range(1, settings.max_attempts + 1):
        lease = _claim(db)
        assert lease is not None and lease.attempt == attempt
        _expire(db, job_id)
        assert reap_expired_jobs(db) == (1 if attempt == settings.max_attempts else 0)
    job = job_row(db, job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "worker_lost" and "3 times" in job.error["message"]
    assert _claim(db) is None

    cancelled = post_job(client, "test_sleep", dataset_id)["id"]
    assert _claim(db) is not None
    client.post(f"/v1/jobs/{cancelled}/cancel")
    _expire(db, cancelled)
    assert _claim(db) is None, "a cancelled job whose worker died is not run again"
    reap_expired_jobs(db)
    assert job_row(db, cancelled).status == "cancelled"


def test_release_does_not_count_the_attempt(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    lease = _claim(db)
    assert lease is not None
    release_job(db, lease)
    job = job_row(db, job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None
    assert _claim(db) is not None


def test_infrastructure_errors_are_retried_with_backoff(client: TestClient,
                                                        db: Database) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    lease = _claim(db)
    assert lease is not None
    assert retry_job(db, lease, reason="OperationalError: connection reset") is True
    job = job_row(db, job_id)
    assert job.status == "queued" and job.run_after > utcnow() + timedelta(seconds=1)
    assert _claim(db) is None, "not before the backoff"
    with db.session() as session:
        session.execute(update(JobRecord).where(JobRecord.id == job_id)
                        .values(run_after=utcnow(), attempts=2))
    last = _claim(db)
    assert last is not None and last.attempt == 3
    assert retry_job(db, last, reason="OperationalError: connection reset") is False
    job = job_row(db, job_id)
    assert job.status == "failed" and job.error["code"] == "internal_error"  # type: ignore[index]
    assert "Traceback" not in job.error["message"]  # type: ignore[index]


@pytest.mark.postgres
def test_four_workers_run_two_hundred_jobs_once_each(client: TestClient, db: Database) -> None:
    """Four workers' claim loops (threads, the job run inline to keep this fast) race for
    200 jobs: each runs exactly once."""
    if db.is_sqlite:
        pytest.skip("needs PostgreSQL (TABXAI_TEST_DATABASE_URL)")
    dataset_id = upload_dataset(client)
    ids = [post_job(client, "test_count", dataset_id, counter_dir="unused")["id"]
           for _ in range(200)]
    runs: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (lease := _claim(db, worker=name)) is not None:
            with lock:
                runs.append((lease.job_id, name))
            complete_job(db, lease, summary={"by": name}, arrays=[], device_used="cpu")

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(job_id for job_id, _ in runs) == sorted(ids), "every job ran exactly once"
    assert len({name for _, name in runs}) > 1, "the work was shared"
    assert _count(db, JobRecord, status="succeeded") == 200
    assert _count(db, JobResult) == 200
    with db.session() as session:
        assert set(session.scalars(select(JobRecord.attempts))) == {1}


def test_no_blob_is_left_behind(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    lease = _claim(db)
    assert lease is not None
    blobs_before = _count(db, Blob)
    writer = ArrayWriter(lambda: fenced_transaction(db, lease), job_id=job_id,
                         owner=lease.owner, name="values", dtype="int64", row_shape=())
    writer.append(np.arange(100_000))
    assert _count(db, Blob) == blobs_before + 1, "one full chunk written, the rest pending"
    assert writer.close().shape == (100_000,)
    assert _count(db, Blob) == blobs_before + 2
    retry_job(db, lease, reason="test")
    assert _count(db, Blob) == blobs_before
    assert _count(db, ArrayChunk) == 0
