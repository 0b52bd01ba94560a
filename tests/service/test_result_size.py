"""Result sizes: every kind estimates the bytes its result will take (close to what is
then stored), and a job past TABXAI_MAX_RESULT_BYTES is refused before it is queued."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db import Database
from service.results.tables import ArrayChunk
from service.tables import Blob
from tests.model_files import SavedModel
from tests.service.jobs_testkinds import wait_final
from tests.service.test_datasets import assert_problem
from tests.service.test_methods import RASHOMON_SMALL, _dataset, _model


def _stored_bytes(db: Database, job_id: str) -> int:
    """Bytes of the job's array chunks as stored in the database's blobs."""
    with db.session() as session:
        return int(session.scalar(
            select(func.sum(Blob.size_bytes)).join(ArrayChunk, ArrayChunk.blob_id == Blob.id)
            .where(ArrayChunk.job_id == job_id)) or 0)


def test_every_kind_estimates_the_size_of_its_result(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    regression = _dataset(client, "regression", n=120)
    multiclass = _dataset(client, "multiclass", n=120)
    xgb = _model(client, saved_models["xgboost_regression_json"])
    bodies: dict[str, dict[str, Any]] = {
        "tree_shap": {"kind": "tree_shap", "model_id": xgb, "dataset_id": regression,
                      "params": {"interactions": True}},
        "tree_shap_multiclass": {
            "kind": "tree_shap", "dataset_id": multiclass,
            "model_id": _model(client, saved_models["lightgbm_multiclass"]),
            "params": {"max_rows": 7}},
        "permutation_importance": {
            "kind": "permutation_importance", "model_id": xgb, "dataset_id": regression,
            "params": {"n_repeats": 3, "features": [["f1", "f2"], ["f0"]]}},
        "feature_vectors": {"kind": "feature_vectors", "model_id": xgb,
                            "dataset_id": regression,
                            "params": {"feature_groups": {"g": ["f3", "f4"]}}},
        "feature_vectors_model_free": {"kind": "feature_vectors", "dataset_id": regression},
        "rashomon_interactions": {"kind": "rashomon_interactions", "model_id": xgb,
                                  "dataset_id": regression, "params": RASHOMON_SMALL},
    }
    jobs = {}
    for name, body in bodies.items():
        dry = client.post("/v1/jobs?dry_run=true", json=body)
        assert dry.status_code == 200, dry.text
        job = client.post("/v1/jobs", json=body)
        assert job.status_code == 202, job.text
        assert job.json()["estimate"] == dry.json()["estimate"]
        jobs[name] = job.json()
    for name, job in jobs.items():
        assert wait_final(db, job["id"], timeout=180).status == "succeeded", name
        estimate = job["estimate"]
        listing = client.get(f"/v1/jobs/{job['id']}/result/arrays").json()
        listed = {a["name"]: a["nbytes"] for a in listing}
        stored = _stored_bytes(db, job["id"])
        assert sum(listed.values()) == stored, name
        assert set(estimate["result_bytes_by_array"]) == set(listed), name
        assert estimate["result_bytes"] == sum(estimate["result_bytes_by_array"].values())
        exact = {a: b for a, b in estimate["result_bytes_by_array"].items()
                 if a != "search_trace"}
        assert exact == {a: b for a, b in listed.items() if a in exact}, name
        # The Rashomon search trace's length depends on the data.
        assert estimate["result_bytes"] == pytest.approx(stored, rel=0.25), (name, stored)


def test_a_job_whose_result_would_be_too_large_is_refused(
        make_client: Any, saved_models: dict[str, SavedModel]) -> None:
    # 240 rows x 5 features: values 4,800 bytes, row index 1,920, plotted values 4,800;
    # interactions add 24,000 and their means 100.
    client = make_client(max_result_bytes=20_000)
    body = {"kind": "tree_shap", "dataset_id": _dataset(client, "regression"),
            "model_id": _model(client, saved_models["xgboost_regression_json"])}
    dry = client.post("/v1/jobs?dry_run=true", json=body)
    assert dry.status_code == 200 and dry.json()["estimate"]["result_bytes"] == 11_520
    body["params"] = {"interactions": True}
    for url in ("/v1/jobs?dry_run=true", "/v1/jobs"):
        problem = assert_problem(client.post(url, json=body), 422, "result_too_large")
        detail = problem["detail"]
        assert "about 34.8 KiB (35,620 bytes, interaction_values alone 23.4 KiB)" in detail
        assert "19.5 KiB (20,000 bytes)" in detail and "TABXAI_MAX_RESULT_BYTES" in detail
        assert "max_rows" in detail and "interactions" in detail
    assert client.get("/v1/jobs").json()["items"] == []
    body["params"] = {"interactions": True, "max_rows": 100}
    assert client.post("/v1/jobs", json=body).status_code == 202
