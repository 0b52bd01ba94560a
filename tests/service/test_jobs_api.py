"""The jobs API without a worker: validation, idempotency, listing, cancel, delete."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from service.auth import create_key
from service.db import Database
from service.jobs.queue import claim_next_job
from tests.service.jobs_testkinds import job_row, post_job, upload_dataset

PROBLEM = "application/problem+json"
JOB_FIELDS = {"id", "kind", "status", "progress", "stage", "model_id", "dataset_id", "params",
              "device", "device_used", "attempts", "error", "created_at", "started_at",
              "finished_at"}


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def test_create_job_echoes_filled_params(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    response = client.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": dataset_id,
                                             "params": {"steps": 3}})
    assert response.status_code == 202
    job = response.json()
    assert set(job) >= JOB_FIELDS
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_")
    assert job["status"] == "queued" and job["stage"] == "queued" and job["progress"] == 0.0
    assert job["params"] == {"steps": 3, "step_seconds": 0.05, "chunk_rows": 4}
    assert job["device"] == "auto" and job["device_used"] is None and job["attempts"] == 0
    assert job["created_at"].endswith("Z") and job["started_at"] is None
    assert job["estimate"] == {"rows_to_predict": 5, "seconds": 0.1}
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_invalid_requests_are_problems_and_queue_nothing(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    body = _problem(client.post("/v1/jobs", json={
        "kind": "test_sleep", "dataset_id": dataset_id, "params": {"steps": 0}}),
        422, "invalid_params")
    assert "params.steps" in body["detail"]
    assert body["errors"][0]["loc"] == ["params", "steps"]
    _problem(client.post("/v1/jobs", json={"kind": "nope", "dataset_id": dataset_id}),
             422, "unknown_kind")
    _problem(client.post("/v1/jobs", json={"kind": "test_needs_model",
                                           "dataset_id": dataset_id}), 422, "model_required")
    _problem(client.post("/v1/jobs", json={"kind": "test_needs_model",
                                           "dataset_id": dataset_id,
                                           "model_id": "mdl_missing"}), 404, "not_found")
    _problem(client.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": "ds_missing"}),
             404, "not_found")
    _problem(client.post("/v1/jobs", json={"kind": "test_sleep", "dataset_id": dataset_id,
                                           "device": "tpu"}), 422, "invalid_request")
    assert client.get("/v1/jobs").json() == {"items": [], "next_cursor": None}


def test_dry_run_estimates_without_queueing(client: TestClient) -> None:
    dataset_id = upload_dataset(client, n_rows=7)
    response = client.post("/v1/jobs?dry_run=true",
                           json={"kind": "test_sleep", "dataset_id": dataset_id})
    assert response.status_code == 200
    assert response.json() == {"estimate": {"rows_to_predict": 7, "seconds": 0.1}}
    assert client.get("/v1/jobs").json()["items"] == []


def test_idempotency_key(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    body = {"kind": "test_sleep", "dataset_id": dataset_id, "params": {"steps": 2}}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    _problem(client.post("/v1/jobs", json={**body, "params": {"steps": 3}},
                         headers={"Idempotency-Key": "k1"}), 409, "idempotency_key_reused")
    other = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"})
    no_key = client.post("/v1/jobs", json=body)
    ids = {first.json()["id"], other.json()["id"], no_key.json()["id"]}
    assert len(ids) == 3
    assert len(client.get("/v1/jobs").json()["items"]) == 3


def test_list_filters_and_pages(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    sleeps = [post_job(client, "test_sleep", dataset_id)["id"] for _ in range(3)]
    fail = post_job(client, "test_fail", dataset_id)["id"]
    client.post(f"/v1/jobs/{sleeps[0]}/cancel")
    page = client.get("/v1/jobs?limit=2").json()
    assert [j["id"] for j in page["items"]] == [fail, sleeps[2]]
    rest = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}").json()
    assert [j["id"] for j in rest["items"]] == [sleeps[1], sleeps[0]]
    assert rest["next_cursor"] is None
    assert [j["id"] for j in client.get("/v1/jobs?kind=test_fail").json()["items"]] == [fail]
    cancelled = client.get("/v1/jobs?status=cancelled").json()["items"]
    assert [j["id"] for j in cancelled] == [sleeps[0]]
    _problem(client.get("/v1/jobs?status=exploded"), 422, "invalid_request")


def test_cancel_queued_and_running(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    queued = post_job(client, "test_sleep", dataset_id)["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert client.post(f"/v1/jobs/{queued}/cancel").json() == job
    running = post_job(client, "test_sleep", dataset_id)["id"]
    lease = claim_next_job(db, worker="t", queues=["any"], kinds=["test_sleep"],
                           prefer_gpu=False, lease_seconds=30)
    assert lease is not None and lease.job_id == running
    job = client.post(f"/v1/jobs/{running}/cancel").json()
    assert job["status"] == "running" and job["cancel_requested"] is True
    assert job_row(db, running).cancel_requested


def test_delete_job(client: TestClient, db: Database) -> None:
    dataset_id = upload_dataset(client)
    running = post_job(client, "test_sleep", dataset_id)["id"]
    claim_next_job(db, worker="t", queues=["any"], kinds=["test_sleep"], prefer_gpu=False,
                   lease_seconds=30)
    queued = post_job(client, "test_sleep", dataset_id)["id"]
    _problem(client.delete(f"/v1/jobs/{running}"), 409, "job_running")
    assert client.delete(f"/v1/jobs/{queued}").status_code == 204
    _problem(client.get(f"/v1/jobs/{queued}"), 404, "job_not_found")
    _problem(client.delete(f"/v1/jobs/{queued}"), 404, "job_not_found")


def test_dataset_in_use_by_a_queued_job_cannot_be_deleted(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    body = _problem(client.delete(f"/v1/datasets/{dataset_id}"), 409, "in_use")
    assert job_id in body["detail"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204


def test_unknown_job_and_unfinished_result_are_problems(client: TestClient) -> None:
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id)["id"]
    for path in ("", "/result", "/result/arrays", "/result/arrays/x", "/result/arrays/x.npy",
                 "/plots", "/plots/x.svg", "/events"):
        _problem(client.get(f"/v1/jobs/job_nope{path}"), 404, "job_not_found")
    for path in ("/result", "/result/arrays", "/result/arrays/steps",
                 "/result/arrays/steps.csv", "/plots", "/plots/values.png"):
        body = _problem(client.get(f"/v1/jobs/{job_id}{path}"), 409, "result_not_ready")
        assert "queued" in body["detail"]
    _problem(client.post("/v1/jobs/job_nope/cancel"), 404, "job_not_found")


def test_jobs_are_invisible_to_other_workspaces(client: TestClient, db: Database) -> None:
    with db.session() as session:
        _, key_a = create_key(session, "a")
        _, key_b = create_key(session, "b")
    a = {"Authorization": f"Bearer {key_a}"}
    b = {"Authorization": f"Bearer {key_b}"}
    body = "x,y\n1,2\n"
    dataset = client.post("/v1/datasets", content=body, headers={**a, "Content-Type": "text/csv"})
    job = client.post("/v1/jobs", headers=a,
                      json={"kind": "test_sleep", "dataset_id": dataset.json()["id"]}).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=a).status_code == 200
    _problem(client.get(f"/v1/jobs/{job['id']}", headers=b), 404, "job_not_found")
    _problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=b), 404, "job_not_found")
    _problem(client.delete(f"/v1/jobs/{job['id']}", headers=b), 404, "job_not_found")
    assert client.get("/v1/jobs", headers=b).json()["items"] == []
    _problem(client.post("/v1/jobs", headers=b, json={
        "kind": "test_sleep", "dataset_id": dataset.json()["id"]}), 404, "not_found")
