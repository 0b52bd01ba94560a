"""Hostile input and failing infrastructure: NUL characters, database outages, orphaned
workers, keys that stay required. Each answer is a 4xx/503 problem document, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.db import Database
from tests.service.test_datasets import CSV, assert_problem

# -- NUL characters: PostgreSQL cannot store them; both databases refuse them alike --


def test_a_nul_in_a_path_id_is_not_found(client: TestClient) -> None:
    for path in ("/v1/datasets/ds_%00", "/v1/datasets/ds_a%00b/rows", "/v1/models/mdl_%00",
                 "/v1/jobs/job_%00", "/v1/jobs/job_%00/result",
                 "/v1/jobs/job_x/result/arrays/a%00b.csv"):
        body = assert_problem(client.get(path), 404, "not_found")
        assert "NUL" in body["detail"], path
    assert_problem(client.delete("/v1/models/mdl_%00"), 404, "not_found")


def test_a_nul_in_a_query_value_is_refused(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/jobs?kind=tree%00shap"), 422, "nul_character")
    assert "'kind'" in body["detail"] and "NUL" in body["detail"]
    assert_problem(client.get("/v1/datasets?cursor=%00"), 422, "nul_character")
    response = client.post("/v1/datasets?name=a%00b", content=CSV,
                           headers={"Content-Type": "text/csv"})
    assert "'name'" in assert_problem(response, 422, "nul_character")["detail"]
    assert client.get("/v1/datasets").json()["items"] == [], "nothing was stored"


def test_a_nul_in_a_form_field_or_json_body_is_refused(client: TestClient) -> None:
    response = client.post("/v1/datasets", files={"file": ("d.csv", CSV)},
                           data={"name": "a\x00b"})
    assert "NUL" in assert_problem(response, 422, "nul_character")["detail"]
    assert client.get("/v1/datasets").json()["items"] == [], "nothing was stored"
    dataset_id = client.post("/v1/datasets", files={"file": ("d.csv", CSV)}).json()["id"]
    response = client.post("/v1/jobs", json={"kind": "tree_shap", "model_id": "mdl_\x00",
                                             "dataset_id": dataset_id})
    assert_problem(response, 422, "nul_character")


def test_a_value_too_long_for_its_column_is_refused_or_kept(client: TestClient,
                                                            db: Database) -> None:
    response = client.post(f"/v1/datasets?name={'n' * 300}", content=CSV,
                           headers={"Content-Type": "text/csv"})
    if db.is_sqlite:  # SQLite does not enforce VARCHAR lengths
        assert response.status_code == 201, response.text
    else:
        body = assert_problem(response, 422, "invalid_value")
        assert "too long" in body["detail"]
