"""Nothing returns a large array as JSON unasked: pages are bounded in values as well as
rows, and summaries leave wide matrices to the arrays they name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from service.db import Database
from service.jobs.result_endpoints import MAX_PAGE_VALUES
from tests.service.jobs_testkinds import post_job, upload_dataset, wait_final
from tests.service.test_datasets import assert_problem

WIDE_FEATURES = 101  # one more than a summary inlines interactions for


def test_json_pages_hold_a_bounded_number_of_values(
        worker_client: tuple[TestClient, Database]) -> None:
    client, db = worker_client
    dataset_id = upload_dataset(client)
    wide = post_job(client, "test_arrays", dataset_id, n_rows=10, wide=[300, 1000])["id"]
    too_wide = post_job(client, "test_arrays", dataset_id, n_rows=10,
                        wide=[2, MAX_PAGE_VALUES + 1])["id"]
    for job_id in (wide, too_wide):
        assert wait_final(db, job_id).status == "succeeded"
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{wide}/result/arrays").json()}
    assert listing["values"]["max_page_rows"] == 1000
    assert listing["wide"]["max_page_rows"] == MAX_PAGE_VALUES // 1000 == 250
    url = f"/v1/jobs/{wide}/result/arrays/wide"
    page = client.get(url).json()
    assert page["limit"] == 100 and len(page["rows"]) == 100
    assert len(client.get(f"{url}?limit=250").json()["rows"]) == 250
    body = assert_problem(client.get(f"{url}?limit=251"), 422, "page_too_large")
    assert "at most 250 rows" in body["detail"] and "limit=250" in body["detail"]
    assert f"/v1/jobs/{wide}/result/arrays/wide.npy" in body["detail"]

    url = f"/v1/jobs/{too_wide}/result/arrays/wide"
    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{too_wide}/result/arrays").json()}
    assert listing["wide"]["max_page_rows"] == 0
    for query in ("", "?limit=1"):
        body = assert_problem(client.get(url + query), 422, "page_too_large")
        assert f"{MAX_PAGE_VALUES + 1:,} values" in body["detail"] and ".npy" in body["detail"]
    download = client.get(f"{url}.npy")
    assert download.status_code == 200
    assert np.load(io.BytesIO(download.content)).shape == (2, MAX_PAGE_VALUES + 1)


def _wide_problem(client: TestClient, tmp_path: Path) -> tuple[str, str]:
    """A 101-feature XGBoost regressor and its data, uploaded."""
    import xgboost

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(WIDE_FEATURES)]
    X = rng.normal(size=(40, WIDE_FEATURES))
    y = X[:, 0] * X[:, 1] + X[:, 2]
    booster = xgboost.train({"max_depth": 3, "nthread": 1, "seed": 0},
                            xgboost.DMatrix(X, y, feature_names=names), 20)
    path = tmp_path / "wide.json"
    booster.save_model(path)
    model = client.post("/v1/models", files={"file": ("wide.json", path.read_bytes())})
    assert model.status_code == 201, model.text
    frame = pd.DataFrame(X, columns=names).assign(y=y)
    dataset = client.post("/v1/datasets", data={"target": "y"},
                          files={"file": ("wide.csv", frame.to_csv(index=False))})
    assert dataset.status_code == 201, dataset.text
    return model.json()["id"], dataset.json()["id"]


def test_a_wide_tree_shap_summary_names_its_interaction_array(
        worker_client: tuple[TestClient, Database], tmp_path: Path) -> None:
    client, db = worker_client
    model_id, dataset_id = _wide_problem(client, tmp_path)
    response = client.post("/v1/jobs", json={
        "kind": "tree_shap", "model_id": model_id, "dataset_id": dataset_id,
        "params": {"interactions": True}})
    assert response.status_code == 202, response.text
    shap = response.json()["id"]
    assert wait_final(db, shap, timeout=120).status == "succeeded"

    summary = client.get(f"/v1/jobs/{shap}/result").json()
    assert summary["interaction_importance"] is None
    assert summary["interaction_importance_array"] == "interaction_importance"
    pairs = np.load(io.BytesIO(client.get(
        f"/v1/jobs/{shap}/result/arrays/interaction_importance.npy").content))
    values = np.load(io.BytesIO(client.get(
        f"/v1/jobs/{shap}/result/arrays/interaction_values.npy").content))
    assert pairs.shape == (WIDE_FEATURES, WIDE_FEATURES)
    np.testing.assert_allclose(pairs, np.abs(values.astype(np.float64)).mean(axis=0),
                               rtol=1e-5, atol=1e-7)
    assert "interactions" in client.get(f"/v1/jobs/{shap}/plots").json()
    plot = client.get(f"/v1/jobs/{shap}/plots/interactions.svg")
    assert plot.status_code == 200 and b"<svg" in plot.content[:2000]

