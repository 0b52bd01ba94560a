"""A column's dtype, as an upload reports it, decides what a job does with it.

The upload (service.catalog.tabular) and the job (models.features) read the same Arrow
types; a column accepted when the job is posted must not be refused when it runs.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.db import Database
from tests.model_files import FEATURE_NAMES, SavedModel, make_data
from tests.service.jobs_testkinds import wait_final
from tests.service.test_datasets import assert_problem
from tests.service.test_methods import _model


def _frame_with(f4: list[str]) -> pd.DataFrame:
    X, y = make_data(n=len(f4))
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    frame["f4"] = f4
    frame["y"] = y["regression"]
    return frame


def _upload(client: TestClient, frame: pd.DataFrame, fmt: str = "csv") -> dict[str, str]:
    if fmt == "csv":
        file = ("d.csv", frame.to_csv(index=False).encode())
    else:  # f4 of Arrow's null type: what a writer stores for a column with no values
        table = pa.Table.from_pandas(frame.drop(columns="f4"), preserve_index=False)
        table = table.add_column(4, "f4", pa.nulls(len(frame)))
        sink = io.BytesIO()
        pq.write_table(table, sink)
        file = ("d.parquet", sink.getvalue())
    r = client.post("/v1/datasets", files={"file": file}, data={"target": "y"})
    assert r.status_code == 201, r.text
    return {c["name"]: c["dtype"] for c in r.json()["columns"]} | {"id": r.json()["id"]}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_all_empty_feature_column_runs_as_missing_values(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel], fmt: str) -> None:
    client, db = worker_client
    dataset = _upload(client, _frame_with([""] * 60), fmt)
    assert dataset["f4"] == "float"
    r = client.post("/v1/jobs", json={
        "kind": "tree_shap", "model_id": _model(client, saved_models["xgboost_regression_json"]),
        "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    row = wait_final(db, r.json()["id"], timeout=180)
    job = client.get(f"/v1/jobs/{row.id}").json()
    assert row.status == "succeeded", job.get("error")


def test_date_and_time_feature_columns_are_refused_when_the_job_is_posted(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    model_id = _model(client, saved_models["xgboost_regression_json"])
    for values in (["2024-01-02"] * 6, ["2024-01-02 10:30:00"] * 6, ["12:30:00"] * 6):
        dataset = _upload(client, _frame_with(values))
        assert dataset["f4"] == "datetime", values
        body = assert_problem(client.post("/v1/jobs", json={
            "kind": "tree_shap", "model_id": model_id, "dataset_id": dataset["id"]}),
            422, "feature_mismatch")
        assert "f4 (datetime" in body["detail"], body["detail"]
        assert "upload the table again" in body["detail"], body["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_model_free_feature_vectors_takes_an_empty_column_as_missing_values(
        worker_client: tuple[TestClient, Database]) -> None:
    client, db = worker_client
    dataset = _upload(client, _frame_with([""] * 60), "parquet")
    assert dataset["f4"] == "float"
    r = client.post("/v1/jobs", json={"kind": "feature_vectors", "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    row = wait_final(db, r.json()["id"], timeout=180)
    job = client.get(f"/v1/jobs/{row.id}").json()
    assert row.status == "succeeded", job.get("error")
    summary = client.get(f"/v1/jobs/{row.id}/result").json()
    assert {f["feature"] for f in summary["features"]} == set(FEATURE_NAMES)
