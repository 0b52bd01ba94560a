"""The four methods end to end: upload, POST a job, a real worker runs it, fetch results.

Each result is compared with the reference a user would otherwise call (shap,
scikit-learn, the method's own function on the same arrays).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import Database
from tests.model_files import FEATURE_NAMES, SavedModel, make_data
from tests.service.jobs_testkinds import fast_settings, running_worker, wait_final
from tests.service.test_datasets import assert_problem


def _dataset(client: TestClient, target: str = "regression", n: int = 240) -> str:
    X, y = make_data(n=n)
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    frame["y"] = y[target]
    r = client.post("/v1/datasets", files={"file": ("d.csv", frame.to_csv(index=False))},
                    data={"target": "y"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _model(client: TestClient, saved: SavedModel) -> str:
    # An ONNX graph names no columns: give them, as jobs require.
    fields = ({"feature_names": json.dumps(FEATURE_NAMES)} if saved.path.suffix == ".onnx"
              else {})
    r = client.post("/v1/models", files={"file": (saved.path.name, saved.path.read_bytes())},
                    data=fields)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _run(client: TestClient, db: Database, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    row = wait_final(db, job_id, timeout=180)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert row.status == "succeeded", job
    return job


def _npy(client: TestClient, job_id: str, name: str) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job_id}/result/arrays/{name}.npy")
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content))


def _plots_render(client: TestClient, job_id: str, expected: set[str], **query: str) -> None:
    names = client.get(f"/v1/jobs/{job_id}/plots").json()
    names = set(names["plots"] if isinstance(names, dict) else names)
    assert expected <= names
    for name in expected:
        svg = client.get(f"/v1/jobs/{job_id}/plots/{name}.svg", params=query)
        assert svg.status_code == 200 and b"<svg" in svg.content[:2000], svg.text[:300]
    png = client.get(f"/v1/jobs/{job_id}/plots/{sorted(expected)[0]}.png", params=query)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_tree_shap_equals_shap_with_interactions(worker_client: tuple[TestClient, Database],
                                                 saved_models: dict[str, SavedModel]) -> None:
    import shap

    client, db = worker_client
    saved = saved_models["xgboost_binary_json"]
    dataset_id = _dataset(client, "binary")
    job = _run(client, db, {"kind": "tree_shap", "model_id": _model(client, saved),
                            "dataset_id": dataset_id, "params": {"interactions": True}})
    assert job["params"]["max_rows"] == 10_000 and job["device_used"] == "cpu"
    summary = client.get(f"/v1/jobs/{job['id']}/result").json()
    X, _ = make_data(n=240)
    explainer = shap.TreeExplainer(saved.native)
    expected = explainer.shap_values(X)
    values = _npy(client, job["id"], "shap_values")
    scale = np.abs(expected).max()
    assert values.shape == (240, 5)
    np.testing.assert_allclose(values, expected, atol=1e-5 * scale)
    pairs = _npy(client, job["id"], "interaction_values")
    np.testing.assert_allclose(pairs, explainer.shap_interaction_values(X), atol=1e-5 * scale)
    assert (_npy(client, job["id"], "row_index") == np.arange(240)).all()
    assert summary["n_rows"] == 240 and summary["feature_names"] == FEATURE_NAMES
    assert summary["provenance"]["max_additivity_residual"] <= 1e-4 * max(
        1.0, summary["provenance"]["prediction_scale"])
    means = [item["mean_abs_shap"][0] for item in summary["importance"]]
    assert means == sorted(means, reverse=True)
    assert np.asarray(summary["interaction_importance"]).shape == (5, 5)
    table = pq.read_table(io.BytesIO(
        client.get(f"/v1/jobs/{job['id']}/result/arrays/shap_values.parquet").content))
    assert table.num_rows == 240
    csv = client.get(f"/v1/jobs/{job['id']}/result/arrays/shap_values.csv")
    assert csv.status_code == 200 and csv.text.count("\n") >= 240
    _plots_render(client, job["id"], {"summary", "importance", "interactions"})


def test_tree_shap_multiclass_ubjson_values(worker_client: tuple[TestClient, Database],
                                           saved_models: dict[str, SavedModel]) -> None:
    import shap

    client, db = worker_client
    saved = saved_models["xgboost_multiclass_ubj"]
    job = _run(client, db, {"kind": "tree_shap", "model_id": _model(client, saved),
                            "dataset_id": _dataset(client, "multiclass")})
    X, _ = make_data(n=240)
    expected = np.asarray(shap.TreeExplainer(saved.native).shap_values(X))  # [N, F, K]
    values = _npy(client, job["id"], "shap_values")                        # [N, K, F]
    assert values.shape == (240, 3, 5)
    np.testing.assert_allclose(values, expected.transpose(0, 2, 1),
                               atol=1e-5 * np.abs(expected).max())
    summary = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert summary["outputs"] == ["0", "1", "2"]
    assert len(summary["importance"][0]["mean_abs_shap"]) == 3


def test_jobs_refuse_a_dataset_that_lacks_model_features(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    model_id = _model(client, saved_models["xgboost_regression_json"])
    frame = pd.DataFrame({"f0": [1.0, 2.0], "f1": [3.0, 4.0], "f2": ["a", "b"],
                          "f3": [0.0, 1.0], "y": [1.0, 0.0]})
    dataset = client.post("/v1/datasets", files={"file": ("d.csv", frame.to_csv(index=False))},
                          data={"target": "y"}).json()
    body = assert_problem(client.post("/v1/jobs", json={
        "kind": "tree_shap", "model_id": model_id, "dataset_id": dataset["id"]}),
        422, "feature_mismatch")
    assert "f4" in body["detail"] and "f2" in body["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_tree_shap_refuses_a_neural_model(client: TestClient,
                                          saved_models: dict[str, SavedModel]) -> None:
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["onnx_mlp_regression"])
    body = assert_problem(client.post("/v1/jobs", json={
        "kind": "tree_shap", "model_id": model_id, "dataset_id": dataset_id}),
        422, "not_a_tree_model")
    assert "permutation_importance" in body["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_permutation_importance_equals_scikit_learn(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    from sklearn.inspection import permutation_importance

    client, db = worker_client
    saved = saved_models["sklearn_rf_multiclass"]
    dataset_id = _dataset(client, "multiclass")
    job = _run(client, db, {"kind": "permutation_importance",
                            "model_id": _model(client, saved), "dataset_id": dataset_id,
                            "params": {"scoring": "neg_log_loss", "n_repeats": 3}})
    summary = client.get(f"/v1/jobs/{job['id']}/result").json()
    X, y = make_data(n=240)
    reference = permutation_importance(saved.native, pd.DataFrame(X, columns=FEATURE_NAMES),
                                       y["multiclass"], scoring="neg_log_loss", n_repeats=3,
                                       random_state=0)
    by_name = {item["feature"]: item for item in summary["importances"]}
    for j, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(by_name[name]["values"], reference.importances[j],
                                   atol=1e-9)
    assert summary["scoring"] == "neg_log_loss"
    import lightgbm
    import sklearn
    import xgboost

    assert summary["provenance"]["library_versions"] == {
        "numpy": np.__version__, "xgboost": xgboost.__version__,
        "lightgbm": lightgbm.__version__, "scikit-learn": sklearn.__version__}
    _plots_render(client, job["id"], {"importance"})


def test_permutation_bad_params_are_422(client: TestClient,
                                        saved_models: dict[str, SavedModel]) -> None:
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["xgboost_regression_json"])
    for params, fragment in (({"scoring": "wrongness"}, "scorer"),
                             ({"n_repeats": 0}, "n_repeats"),
                             ({"features": [["f0", "nope"]]}, "nope")):
        r = client.post("/v1/jobs", json={"kind": "permutation_importance",
                                          "model_id": model_id, "dataset_id": dataset_id,
                                          "params": params})
        assert r.status_code == 422, r.text
        assert fragment in r.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_feature_vectors_with_a_model_and_model_free(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    dataset_id = _dataset(client, "multiclass")
    job = _run(client, db, {"kind": "feature_vectors", "dataset_id": dataset_id,
                            "model_id": _model(client, saved_models["lightgbm_multiclass"])})
    summary = client.get(f"/v1/jobs/{job['id']}/result").json()
    importances = [f["importance"] for f in summary["features"]]
    assert importances[0] == pytest.approx(1.0) and importances == sorted(importances,
                                                                          reverse=True)
    assert {f["feature"] for f in summary["features"]} == set(FEATURE_NAMES)
    assert _npy(client, job["id"], "cooccurrence").shape == (5, 5)
    _plots_render(client, job["id"], {"feature_vectors", "importance"})

    free = _run(client, db, {"kind": "feature_vectors", "dataset_id": dataset_id})
    summary = client.get(f"/v1/jobs/{free['id']}/result").json()
    assert summary["provenance"]["model"] == "default_forest"
    assert summary["n_trees"] == 2500
    top = summary["features"][0]["feature"]
    assert top == "f0"  # the strongest term of the target


def test_feature_vectors_refuses_a_neural_model(client: TestClient,
                                                saved_models: dict[str, SavedModel]) -> None:
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["onnx_mlp_regression"])
    body = assert_problem(client.post("/v1/jobs", json={
        "kind": "feature_vectors", "model_id": model_id, "dataset_id": dataset_id}),
        422, "not_a_tree_model")
    assert "permutation_importance" in body["detail"]


RASHOMON_SMALL = {"features": ["f0", "f1", "f2"], "shuffle_times": 2, "delta": 0.5,
                  "max_rows": 120, "epsilon_rate": 0.1}


def test_rashomon_interactions_end_to_end(worker_client: tuple[TestClient, Database],
                                          saved_models: dict[str, SavedModel]) -> None:
    from explainers.rashomon import RashomonParams, rashomon_interactions
    from models.loading import load_model

    client, db = worker_client
    saved = saved_models["onnx_mlp_regression"]
    dataset_id = _dataset(client)
    model_id = _model(client, saved)
    body = {"kind": "rashomon_interactions", "model_id": model_id, "dataset_id": dataset_id,
            "params": RASHOMON_SMALL}
    dry = client.post("/v1/jobs?dry_run=true", json=body)
    assert dry.status_code == 200, dry.text
    estimate = dry.json()["estimate"]
    assert estimate["rows_to_predict"] > 0 and estimate["seconds"] > 0
    assert client.get("/v1/jobs").json()["items"] == []
    job = _run(client, db, body)
    summary = client.get(f"/v1/jobs/{job['id']}/result").json()
    X, y = make_data(n=240)
    model = load_model(saved.path, format="onnx")
    reference = rashomon_interactions(
        lambda rows: model.predict(rows, output="label"), X, y["regression"],
        task="regression", feature_names=FEATURE_NAMES,
        params=RashomonParams(**{**RASHOMON_SMALL, "features": tuple(RASHOMON_SMALL["features"])}))
    np.testing.assert_allclose(_npy(client, job["id"], "fis_clouds"),
                               reference.arrays()["fis_clouds"], rtol=1e-6)
    assert [i["features"] for i in summary["interactions"]] == \
        [i["features"] for i in reference.summary()["interactions"]]
    pair = ",".join(summary["interactions"][0]["features"])
    _plots_render(client, job["id"], {"swarm", "swarm_main", "halo", "search_trace"})
    halo = client.get(f"/v1/jobs/{job['id']}/plots/halo.svg", params={"pair": pair})
    assert halo.status_code == 200


def test_rashomon_same_numbers_with_one_or_two_worker_processes(
        db: Database, settings: Settings, make_client: Any,
        saved_models: dict[str, SavedModel]) -> None:
    """The method doc's rule: the same numbers whether one job process has the worker's
    cores or two job processes run side by side with half of them each."""
    fast = fast_settings(settings)
    client = make_client(**{k: getattr(fast, k)
                            for k in ("lease_seconds", "heartbeat_seconds", "poll_seconds")})
    body = {"kind": "rashomon_interactions",
            "model_id": _model(client, saved_models["onnx_mlp_regression"]),
            "dataset_id": _dataset(client), "params": RASHOMON_SMALL}
    with running_worker(db, fast, concurrency=1):
        alone = _run(client, db, body)["id"]
    with running_worker(db, fast, concurrency=2):
        pair = []
        for _ in range(2):
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            pair.append(r.json()["id"])
        for job_id in pair:
            assert wait_final(db, job_id, timeout=180).status == "succeeded"
    listing = client.get(f"/v1/jobs/{alone}/result/arrays").json()
    names = [a["name"] for a in (listing["items"] if isinstance(listing, dict) else listing)]
    assert {"masks", "fis_clouds", "fis_losses", "main_effect_clouds"} <= set(names)
    for name in names:
        expected = _npy(client, alone, name)
        for job_id in pair:
            assert np.array_equal(_npy(client, job_id, name), expected, equal_nan=True), name


@pytest.mark.parametrize(("params", "fragment"), [
    ({"epsilon_rate": 0}, "epsilon_rate"),
    ({"delta": 0.3}, "delta"),
    ({"order": 4}, "order"),
    ({"features": ["f0", "zzz"]}, "zzz"),
])
def test_rashomon_bad_params_are_422(client: TestClient, saved_models: dict[str, SavedModel],
                                     params: dict[str, Any], fragment: str) -> None:
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["onnx_mlp_regression"])
    r = client.post("/v1/jobs", json={"kind": "rashomon_interactions", "model_id": model_id,
                                      "dataset_id": dataset_id, "params": params})
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
