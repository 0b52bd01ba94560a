"""Models that take text columns, end to end: a CSV with text columns, a model trained on
categoricals (XGBoost, HistGradientBoosting) or a ColumnTransformer pipeline, and jobs
whose numbers equal the libraries' own on a DataFrame of the same rows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import xgboost
from fastapi.testclient import TestClient
from sklearn.inspection import permutation_importance
from sklearn.metrics import log_loss

from service.db import Database
from tests.models.test_sklearn_inputs import one_hot_pipeline, text_frame
from tests.models.test_sklearn_inputs import target as sklearn_target
from tests.models.test_xgboost_categories import categorical_frame, categorical_targets, train
from tests.service.jobs_testkinds import wait_final


def _upload_csv(client: TestClient, frame: pd.DataFrame) -> dict[str, Any]:
    r = client.post("/v1/datasets", files={"file": ("d.csv", frame.to_csv(index=False))},
                    data={"target": "y"})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _upload_model(client: TestClient, path: Path) -> dict[str, Any]:
    r = client.post("/v1/models", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _run(client: TestClient, db: Database, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    row = wait_final(db, job_id, timeout=180)
    assert row.status == "succeeded", client.get(f"/v1/jobs/{job_id}").json()
    return job_id


def _npy(client: TestClient, job_id: str, name: str) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job_id}/result/arrays/{name}.npy")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def _importances(client: TestClient, job_id: str) -> dict[str, list[float]]:
    summary = client.get(f"/v1/jobs/{job_id}/result").json()
    return {item["feature"]: item["values"] for item in summary["importances"]}


def _read_back(csv: str) -> pd.DataFrame:
    """The uploaded CSV as pandas reads it: what a user scores the model on."""
    return pd.read_csv(io.StringIO(csv))


def test_xgboost_categorical_model_on_a_csv_with_text_columns(
        worker_client: tuple[TestClient, Database], tmp_path: Path) -> None:
    client, db = worker_client
    frame = categorical_frame(0, 300)
    model = train("binary", frame, tmp_path / "cat.json")
    booster = model.get_booster()
    labels = categorical_targets(frame)["binary"]
    csv = frame.assign(y=labels).to_csv(index=False)
    dataset = _upload_csv(client, _read_back(csv))
    assert {c["name"]: c["dtype"] for c in dataset["columns"]}["color"] == "string"
    uploaded = _upload_model(client, tmp_path / "cat.json")
    assert uploaded["kind"] == "tree"
    assert uploaded["details"]["capabilities"]["tree_shap"] is True
    body = {"model_id": uploaded["id"], "dataset_id": dataset["id"]}

    shap_job = _run(client, db, {**body, "kind": "tree_shap"})
    contribs = booster.predict(xgboost.DMatrix(frame, enable_categorical=True),
                               pred_contribs=True)[:, :-1]
    np.testing.assert_allclose(_npy(client, shap_job, "shap_values"), contribs,
                               atol=1e-6 * np.abs(contribs).max())

    perm_job = _run(client, db, {**body, "kind": "permutation_importance",
                                 "params": {"n_repeats": 3, "scoring": "roc_auc"}})
    reference = permutation_importance(model, frame, labels, scoring="roc_auc", n_repeats=3,
                                       random_state=0)
    got = _importances(client, perm_job)
    for j, name in enumerate(frame.columns):
        np.testing.assert_allclose(got[name], reference.importances[j], atol=1e-12)


def test_xgboost_categorical_job_with_an_unseen_category_fails_with_the_values(
        worker_client: tuple[TestClient, Database], tmp_path: Path) -> None:
    client, db = worker_client
    frame = categorical_frame(1, 200)
    train("regression", frame, tmp_path / "cat.json")
    rows = frame.head(20).assign(y=1.0)
    rows["color"] = rows["color"].astype(object)
    rows.loc[4, "color"] = "purple"
    dataset = _upload_csv(client, rows)
    model_id = _upload_model(client, tmp_path / "cat.json")["id"]
    r = client.post("/v1/jobs", json={"kind": "tree_shap", "model_id": model_id,
                                      "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    row = wait_final(db, r.json()["id"], timeout=120)
    job = client.get(f"/v1/jobs/{row.id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "feature_mismatch", job
    assert "color ('purple')" in job["error"]["message"]


def test_hist_gradient_boosting_with_text_categories(
        worker_client: tuple[TestClient, Database], tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    client, db = worker_client
    frame = text_frame(0, 300)
    y = sklearn_target(frame)
    csv = frame.assign(y=y).to_csv(index=False)
    read = _read_back(csv)
    train_frame = read.drop(columns="y").assign(
        color=lambda f: pd.Categorical(f["color"], categories=sorted(f["color"].dropna().unique())))
    model = HistGradientBoostingRegressor(max_iter=15, random_state=0).fit(train_frame, y)
    skops.io.dump(model, tmp_path / "hgb.skops")
    uploaded = _upload_model(client, tmp_path / "hgb.skops")
    assert uploaded["details"]["capabilities"]["tree_shap"] is True
    body = {"model_id": uploaded["id"], "dataset_id": _upload_csv(client, read)["id"]}

    shap_job = _run(client, db, {**body, "kind": "tree_shap"})
    values = _npy(client, shap_job, "shap_values")
    base = client.get(f"/v1/jobs/{shap_job}/result").json()["base_values"][0]
    np.testing.assert_allclose(values.sum(axis=1) + base, model.predict(train_frame),
                               atol=1e-5)

    perm_job = _run(client, db, {**body, "kind": "permutation_importance",
                                 "params": {"n_repeats": 4}})
    reference = permutation_importance(model, read.drop(columns="y"), y, n_repeats=4,
                                       random_state=0)
    got = _importances(client, perm_job)
    for j, name in enumerate(train_frame.columns):
        np.testing.assert_allclose(got[name], reference.importances[j], atol=1e-12)


def test_column_transformer_pipeline_permutation_equals_scikit_learn(
        worker_client: tuple[TestClient, Database], tmp_path: Path) -> None:
    client, db = worker_client
    frame = text_frame(3, 300).dropna()
    labels = (sklearn_target(frame) > 0.5).astype(np.int64)
    csv = frame.assign(y=labels).to_csv(index=False)
    read = _read_back(csv)
    features = read.drop(columns="y")
    pipe = one_hot_pipeline("binary").fit(features, labels)
    skops.io.dump(pipe, tmp_path / "pipe.skops")
    uploaded = _upload_model(client, tmp_path / "pipe.skops")
    assert uploaded["feature_names"] == ["a", "color", "k", "b"]
    job = _run(client, db, {"kind": "permutation_importance", "model_id": uploaded["id"],
                            "dataset_id": _upload_csv(client, read)["id"],
                            "params": {"n_repeats": 5, "scoring": "neg_log_loss"}})
    reference = permutation_importance(pipe, features, labels, scoring="neg_log_loss",
                                       n_repeats=5, random_state=0)
    got = _importances(client, job)
    for j, name in enumerate(features.columns):
        np.testing.assert_allclose(got[name], reference.importances[j], atol=1e-12)
    summary = client.get(f"/v1/jobs/{job}/result").json()
    assert summary["baseline_score"] == pytest.approx(
        -log_loss(labels, pipe.predict_proba(features)), abs=1e-12)
