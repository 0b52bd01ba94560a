"""The result of a job that ended without one: cancelled and failed jobs say so, when,
and (failed) why, rather than telling the client to wait for events."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.config import Settings
from service.db import Database
from tests.service.jobs_testkinds import (
    fast_settings,
    post_job,
    running_worker,
    upload_dataset,
    wait_final,
)
from tests.service.test_datasets import assert_problem

RESULT_PATHS = ("/result", "/result/arrays", "/result/arrays/steps",
                "/result/arrays/steps.npy", "/result/arrays/steps.csv", "/plots",
                "/plots/values.svg")


def test_a_cancelled_job_says_it_was_cancelled_and_when(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    finished = cancelled["finished_at"].replace("+00:00", "Z")
    for path in RESULT_PATHS:
        body = assert_problem(client.get(f"/v1/jobs/{job_id}{path}"), 409, "job_cancelled")
        assert "was cancelled at " in body["detail"], body["detail"]
        assert finished[:19] in body["detail"], (finished, body["detail"])
        assert "no result" in body["detail"] and "events" not in body["detail"]


def test_a_failed_job_says_it_failed_and_why(client: TestClient, db: Database,
                                             settings: Settings) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_fail", dataset_id, code="bad_rows",
                      message="Row 3 has no value in column b; fill it.")["id"]
    with running_worker(db, fast_settings(settings)):
        assert wait_final(db, job_id).status == "failed"
    finished = client.get(f"/v1/jobs/{job_id}").json()["finished_at"].replace("+00:00", "Z")
    for path in RESULT_PATHS:
        body = assert_problem(client.get(f"/v1/jobs/{job_id}{path}"), 409, "job_failed")
        detail = body["detail"]
        assert f"failed at {finished[:19]}" in detail, detail
        assert "bad_rows" in detail and "Row 3 has no value in column b; fill it." in detail
        assert "no result" in detail and "events" not in detail


def test_an_unfinished_job_still_points_to_its_events(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/result"), 409, "result_not_ready")
    assert "queued" in body["detail"] and f"/v1/jobs/{job_id}/events" in body["detail"]
