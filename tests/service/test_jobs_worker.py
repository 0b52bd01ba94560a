"""Workers running real job processes: progress, events, failures, cancel, memory limits,
a killed worker, SIGTERM, and the database dropping its connections."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from service.config import Settings
from service.db import Database
from service.results.tables import ArrayChunk, JobResult
from tests.service.jobs_testkinds import (
    fast_settings,
    job_row,
    post_job,
    running_worker,
    start_worker_process,
    stop_process,
    upload_dataset,
    wait_final,
    wait_for,
)


def _alive(process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"the worker process exited with {process.returncode}"
    return True


def _chunks(db: Database, job_id: str) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(ArrayChunk)
                                  .where(ArrayChunk.job_id == job_id)) or 0)


def test_events_follow_a_job_to_its_result(client: TestClient, db: Database,
                                           settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=6, step_seconds=0.1)["id"]
    with running_worker(db, fast_settings(settings)), \
            client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert all(line.startswith(("event: job", "data: ", ":")) or not line for line in lines)
    statuses = [event["status"] for event in events]
    assert statuses[-1] == "succeeded", "the stream ends when the job ends"
    assert statuses[0] in ("queued", "running")
    assert len(events) >= 2 and all(e["id"] == job_id for e in events)
    final = events[-1]
    assert final["progress"] == 1.0 and final["attempts"] == 1 and final["error"] is None
    assert final["device_used"] == "cpu" and final["finished_at"] is not None
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    assert result["steps"] == 6 and result["attempt"] == 1
    provenance = result["provenance"]
    assert provenance["job_id"] == job_id and provenance["device"] == "cpu"
    assert {"tabxai", "python", "numpy"} <= set(provenance["versions"])
    rows = client.get(f"/v1/jobs/{job_id}/result/arrays/steps").json()["rows"]
    assert rows == list(range(6))


def test_an_idle_worker_starts_a_new_job_at_once(client: TestClient, db: Database,
                                                 settings: Settings) -> None:
    """Not at its next poll: NOTIFY on PostgreSQL, the worker's named pipe on SQLite."""
    import time

    dataset_id = upload_dataset(client)
    with running_worker(db, fast_settings(settings, poll_seconds=60.0)):
        if db.is_sqlite:
            wait_for(lambda: list((settings.data_dir / "wakeup").glob("*.fifo")),
                     what="the worker's wake-up pipe")
        time.sleep(1.0)  # past the worker's first claim: it sleeps until woken
        job_id = post_job(client, "test_sleep", dataset_id, steps=1, step_seconds=0.0)["id"]
        job = wait_final(db, job_id, timeout=15.0)
    assert job.status == "succeeded"
    assert (job.started_at - job.created_at).total_seconds() < 10.0  # the poll is 60 s
    if db.is_sqlite:
        assert not list((settings.data_dir / "wakeup").glob("*.fifo")), \
            "a stopped worker removes its pipe"


def test_bad_input_fails_at_once(client: TestClient, db: Database, settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_fail", dataset_id, code="too_many_rows",
                      message="Ask for fewer rows.")["id"]
    with running_worker(db, fast_settings(settings)):
        job = wait_final(db, job_id)
    assert job.status == "failed" and job.attempts == 1
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["error"] == {"code": "too_many_rows", "message": "Ask for fewer rows."}


def test_cancel_a_running_job(client: TestClient, db: Database, settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=400, step_seconds=0.05)["id"]
    with running_worker(db, fast_settings(settings)):
        wait_for(lambda: job_row(db, job_id).progress > 0, 60, "progress")
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["cancel_requested"] is True
        job = wait_final(db, job_id, timeout=10)
    assert job.status == "cancelled" and job.stage == "cancelled"
    assert job.finished_at is not None and job.progress < 1
    assert _chunks(db, job_id) == 0, "the cancelled attempt's array chunks are gone"


def test_out_of_memory_fails_the_job_and_the_worker_lives(
        client: TestClient, db: Database, settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    hog = post_job(client, "test_oom", dataset_id, gigabytes=2.0)["id"]
    after = post_job(client, "test_sleep", dataset_id, steps=1)["id"]
    with running_worker(db, fast_settings(settings, job_memory_bytes=600 * 2**20)):
        failed = wait_final(db, hog, timeout=60)
        succeeded = wait_final(db, after, timeout=60)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error is not None and failed.error["code"] == "out_of_memory"
    assert "600 MiB" in failed.error["message"]
    assert succeeded.status == "succeeded"


def test_a_killed_worker_s_job_is_finished_by_another(
        client: TestClient, db: Database, settings: Settings, database_url: str) -> None:
    fast = fast_settings(settings)
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=30, step_seconds=0.1)["id"]
    first = start_worker_process(fast, database_url)
    second = None
    try:
        wait_for(lambda: _alive(first) and job_row(db, job_id).progress > 0.1, 90,
                 "the first worker to run it")
        assert _chunks(db, job_id) > 0
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = start_worker_process(fast, database_url)
        wait_for(lambda: _alive(second) and job_row(db, job_id).status == "succeeded", 90,
                 "the second worker to finish it")
        job = job_row(db, job_id)
    finally:
        stop_process(first, signal.SIGKILL)
        if second is not None:
            assert stop_process(second) == 0
    assert job.status == "succeeded" and job.attempts == 2
    with db.session() as session:
        result = session.get(JobResult, job_id)
        owners = set(session.scalars(select(ArrayChunk.owner)
                                     .where(ArrayChunk.job_id == job_id)))
    assert result is not None and result.summary["attempt"] == 2
    assert owners == {job.lease_owner}, "only the second attempt's chunks remain"
    rows = client.get(f"/v1/jobs/{job_id}/result/arrays/steps?limit=100").json()["rows"]
    assert rows == list(range(30))


def test_sigterm_gives_the_job_back(client: TestClient, db: Database, settings: Settings,
                                    database_url: str) -> None:
    fast = fast_settings(settings)
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=400, step_seconds=0.05)["id"]
    worker = start_worker_process(fast, database_url, "--concurrency", "2")
    try:
        wait_for(lambda: _alive(worker) and job_row(db, job_id).progress > 0, 90,
                 "the worker to run it")
        assert stop_process(worker, signal.SIGTERM, timeout=20) == 0
    finally:
        stop_process(worker, signal.SIGKILL)
    job = job_row(db, job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None
    assert _chunks(db, job_id) == 0


@pytest.mark.postgres
def test_job_finishes_when_the_database_drops_connections(
        client: TestClient, db: Database, settings: Settings, database_url: str) -> None:
    if db.is_sqlite:
        pytest.skip("needs PostgreSQL (TABXAI_TEST_DATABASE_URL)")
    # Only this test's connections are cut: other suites may share the server.
    app_name = f"tabxai_restart_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url).update_query_dict({"application_name": app_name}) \
        .render_as_string(hide_password=False)
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=30, step_seconds=0.1)["id"]
    worker_db = Database(url)
    try:
        with running_worker(worker_db, fast_settings(settings, database_url=url)):
            wait_for(lambda: job_row(db, job_id).progress > 0.2, 60, "the job to run")
            with db.session() as session:
                killed = session.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"), {"name": app_name}).scalar()
            assert killed and killed >= 2, "the worker's and the job's connections were cut"
            job = wait_final(db, job_id, timeout=60)
    finally:
        worker_db.dispose()
    assert job.status == "succeeded", job.error


def test_address_space_is_capped_on_the_cpu_only() -> None:
    """A CPU job process is capped at its start-up size plus its memory cap; a GPU job
    is not, or the CUDA driver could not reserve its address space and would fall back."""
    import os

    from service.jobs.worker import address_space_limit

    with open("/proc/self/statm") as f:
        here = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = address_space_limit("cpu", 1 << 30)
    assert cap is not None and here + (1 << 30) <= cap < here + (1 << 30) + (256 << 20)
    assert address_space_limit("cuda", 1 << 30) is None
