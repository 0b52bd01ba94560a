"""ONNX models and dataset columns over the API: no silent matching by position.

An ONNX model uploaded without feature names (and with none in its metadata) is refused
at job POST with a sentence saying how to fix it, unless it was uploaded with
by_position=true; with names, a table whose columns are in another order is matched by
name.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import r2_score

from models.loading import load_model
from service.db import Database
from tests.model_files import FEATURE_NAMES, SavedModel, make_data
from tests.service.jobs_testkinds import wait_final
from tests.service.test_datasets import assert_problem


def _dataset(client: TestClient, columns: list[str]) -> str:
    X, y = make_data(n=120)
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)[columns]
    frame["y"] = y["regression"]
    r = client.post("/v1/datasets", files={"file": ("d.csv", frame.to_csv(index=False))},
                    data={"target": "y"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _upload(client: TestClient, saved: SavedModel, **fields: str) -> Any:
    return client.post("/v1/models", files={"file": (saved.path.name, saved.path.read_bytes())},
                       data=fields)


def _permutation(model_id: str, dataset_id: str) -> dict[str, Any]:
    return {"kind": "permutation_importance", "model_id": model_id, "dataset_id": dataset_id,
            "params": {"n_repeats": 2}}


def test_a_job_on_an_onnx_model_without_names_is_refused(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["onnx_mlp_regression"]
    model = _upload(client, saved).json()
    assert model["feature_names"] is None
    dataset_id = _dataset(client, FEATURE_NAMES[::-1])
    for kind in ("permutation_importance", "rashomon_interactions"):
        body = assert_problem(client.post("/v1/jobs", json={
            "kind": kind, "model_id": model["id"], "dataset_id": dataset_id}),
            422, "feature_names_required")
        assert "feature_names" in body["detail"] and "by_position=true" in body["detail"]
    assert_problem(client.post("/v1/jobs", params={"dry_run": "true"},
                               json=_permutation(model["id"], dataset_id)),
                   422, "feature_names_required")
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize("how", ["form", "query"])
def test_by_position_opts_in(client: TestClient, saved_models: dict[str, SavedModel],
                             how: str) -> None:
    saved = saved_models["onnx_mlp_regression"]
    if how == "form":
        r = _upload(client, saved, by_position="true")
    else:
        r = client.post("/v1/models", content=saved.path.read_bytes(),
                        params={"format": "onnx", "by_position": "true"},
                        headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["feature_names"] is None and model["details"]["columns_by_position"] is True
    dataset_id = _dataset(client, FEATURE_NAMES)
    r = client.post("/v1/jobs", params={"dry_run": "true"},
                    json=_permutation(model["id"], dataset_id))
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/models/{model['id']}").json()["details"]["columns_by_position"]


def test_by_position_with_names_or_not_a_boolean_is_refused(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models["onnx_mlp_regression"]
    assert_problem(_upload(client, saved, by_position="true",
                           feature_names=json.dumps(FEATURE_NAMES)), 422, "invalid_model")
    assert_problem(_upload(client, saved, by_position="maybe"), 400, "invalid_field")
    assert client.get("/v1/models").json()["items"] == []


def test_with_names_reordered_columns_are_matched_by_name(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    saved = saved_models["onnx_mlp_regression"]
    r = _upload(client, saved, feature_names=json.dumps(FEATURE_NAMES))
    assert r.status_code == 201, r.text
    r = client.post("/v1/jobs", json=_permutation(r.json()["id"],
                                                   _dataset(client, FEATURE_NAMES[::-1])))
    assert r.status_code == 202, r.text
    assert wait_final(db, r.json()["id"], timeout=120).status == "succeeded"
    summary = client.get(f"/v1/jobs/{r.json()['id']}/result").json()
    X, y = make_data(n=120)
    model = load_model(saved.path, format="onnx")
    expected = r2_score(y["regression"], model.predict(X, output="label"))
    assert summary["baseline_score"] == pytest.approx(expected, abs=1e-12)
    assert {item["feature"] for item in summary["importances"]} == set(FEATURE_NAMES)
    assert np.isfinite([item["mean"] for item in summary["importances"]]).all()
