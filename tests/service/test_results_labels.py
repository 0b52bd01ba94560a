"""Every axis of every result array is named, and labelled unless its entries are rows
of data (or search steps): in the array listing (``dims``) and in the Parquet and CSV
downloads, for each of the four methods."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from service.db import Database
from tests.model_files import FEATURE_NAMES, SavedModel
from tests.service.jobs_testkinds import wait_final
from tests.service.test_methods import RASHOMON_SMALL, _dataset, _model

# Axes whose entries are rows of the data or steps of a search: positions, not names.
UNLABELLED = {"row", "step"}


def _jobs(client: TestClient, saved_models: dict[str, SavedModel]) -> dict[str, str]:
    regression = _dataset(client, "regression", n=120)
    multiclass = _dataset(client, "multiclass", n=120)
    xgb = _model(client, saved_models["xgboost_regression_json"])
    bodies = {
        "tree_shap": {"kind": "tree_shap", "model_id": xgb, "dataset_id": regression,
                      "params": {"interactions": True}},
        "tree_shap_multiclass": {
            "kind": "tree_shap", "dataset_id": multiclass,
            "model_id": _model(client, saved_models["xgboost_multiclass_ubj"]),
            "params": {"interactions": True, "max_rows": 40}},
        "permutation_importance": {
            "kind": "permutation_importance", "model_id": xgb, "dataset_id": regression,
            "params": {"n_repeats": 3, "features": [["f1", "f2"], ["f0"], ["f4"]]}},
        "feature_vectors": {"kind": "feature_vectors", "model_id": xgb,
                            "dataset_id": regression},
        "rashomon_interactions": {"kind": "rashomon_interactions", "model_id": xgb,
                                  "dataset_id": regression, "params": RASHOMON_SMALL},
    }
    jobs = {}
    for name, body in bodies.items():
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        jobs[name] = response.json()["id"]
    return jobs


def _arrays(client: TestClient, job_id: str) -> dict[str, dict[str, Any]]:
    listing = client.get(f"/v1/jobs/{job_id}/result/arrays")
    assert listing.status_code == 200, listing.text
    return {a["name"]: a for a in listing.json()}


def _download(client: TestClient, job_id: str, name: str, suffix: str) -> bytes:
    response = client.get(f"/v1/jobs/{job_id}/result/arrays/{name}.{suffix}")
    assert response.status_code == 200, response.text
    return response.content


def test_every_axis_of_every_array_is_labelled(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    jobs = _jobs(client, saved_models)
    for job_id in jobs.values():
        assert wait_final(db, job_id, timeout=180).status == "succeeded", \
            client.get(f"/v1/jobs/{job_id}").json()
    expected_arrays = {
        "tree_shap": {"shap_values", "interaction_values", "row_index", "feature_values",
                      "interaction_importance"},
        "permutation_importance": {"importances"},
        "feature_vectors": {"cooccurrence", "vectors"},
        "rashomon_interactions": {"masks", "mask_losses", "main_effect_clouds", "fis_clouds",
                                  "fis_losses", "fis_in_set", "halo", "search_trace"},
    }
    for kind, job_id in jobs.items():
        arrays = _arrays(client, job_id)
        assert expected_arrays.get(kind, set()) <= set(arrays), (kind, sorted(arrays))
        for name, array in arrays.items():
            dims = array["dims"]
            where = f"{kind}/{name} dims={[(d['name'], d['size']) for d in dims]}"
            assert [d["size"] for d in dims] == array["shape"], where
            assert [d["name"] for d in dims[1:]] == array["axes"], where
            for position, axis in enumerate(dims):
                if position == 0 and axis["name"] in UNLABELLED:
                    assert axis["labels"] is None, where
                    continue
                assert axis["labels"] is not None, f"{where}: {axis['name']} has no labels"
                assert len(axis["labels"]) == axis["size"], where

    # What the labels say, where the method defines them.
    shap = _arrays(client, jobs["tree_shap"])
    assert [d["labels"] for d in shap["interaction_values"]["dims"][1:]] == [FEATURE_NAMES] * 2
    multi = _arrays(client, jobs["tree_shap_multiclass"])
    assert [d["name"] for d in multi["interaction_values"]["dims"]] == \
        ["row", "output", "feature", "feature_2"]
    assert multi["shap_values"]["dims"][1]["labels"] == ["0", "1", "2"]
    importances = _arrays(client, jobs["permutation_importance"])["importances"]["dims"]
    assert importances[0] == {"name": "feature", "size": 3, "labels": ["f1+f2", "f0", "f4"]}
    assert importances[1]["labels"] == ["repeat_0", "repeat_1", "repeat_2"]
    rashomon = _arrays(client, jobs["rashomon_interactions"])
    assert rashomon["masks"]["dims"][0]["labels"] == FEATURE_NAMES
    assert rashomon["fis_clouds"]["dims"][0]["labels"] == ["f0:f1", "f0:f2", "f1:f2"]

    # Downloads: names, not indices, in the columns of every labelled axis.
    long = pq.read_table(io.BytesIO(_download(client, jobs["tree_shap"],
                                              "interaction_values", "parquet")))
    assert long.column_names == ["row", "feature", "feature_2", "value"]
    assert long.slice(0, 6).select(["feature", "feature_2"]).to_pylist()[:6] == [
        {"feature": "f0", "feature_2": b} for b in FEATURE_NAMES] + [
        {"feature": "f1", "feature_2": "f0"}]
    lines = list(csv.reader(io.StringIO(_download(
        client, jobs["tree_shap"], "interaction_values", "csv").decode())))
    assert lines[0] == ["row", "feature", "feature_2", "value"]
    assert lines[1][:3] == ["0", "f0", "f0"] and lines[6][:3] == ["0", "f1", "f0"]
    multi_long = pq.read_table(io.BytesIO(_download(
        client, jobs["tree_shap_multiclass"], "shap_values", "parquet")))
    assert multi_long.column_names == ["row", "output", "feature", "value"]
    assert set(multi_long["output"].to_pylist()) == {"0", "1", "2"}
    lines = list(csv.reader(io.StringIO(_download(
        client, jobs["permutation_importance"], "importances", "csv").decode())))
    assert lines[0] == ["row", "feature", "repeat_0", "repeat_1", "repeat_2"]
    assert [line[:2] for line in lines[1:]] == [["0", "f1+f2"], ["1", "f0"], ["2", "f4"]]
    cooccurrence = pq.read_table(io.BytesIO(_download(
        client, jobs["feature_vectors"], "cooccurrence", "parquet")))
    assert cooccurrence.column_names == ["row", "feature", *FEATURE_NAMES]
    assert cooccurrence["feature"].to_pylist() == FEATURE_NAMES
    clouds = pq.read_table(io.BytesIO(_download(
        client, jobs["rashomon_interactions"], "fis_clouds", "parquet")))
    combos = rashomon["fis_clouds"]["dims"][1]["labels"]
    assert clouds.column_names == ["row", "subset", *combos]
    assert combos == ["r=1 a=1/1 s=++", "r=1 a=1/1 s=+-", "r=1 a=1/1 s=-+", "r=1 a=1/1 s=--"]
    masks = pq.read_table(io.BytesIO(_download(
        client, jobs["rashomon_interactions"], "masks", "parquet")))
    assert masks.column_names == ["row", "feature", "budget", "direction", "value"]
    assert masks.slice(0, 2).select(["feature", "budget", "direction"]).to_pylist() == [
        {"feature": "f0", "budget": "0", "direction": "up"},
        {"feature": "f0", "budget": "0", "direction": "down"}]
