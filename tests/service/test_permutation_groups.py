"""Permutation groups as the README writes them: names and lists of names, mixed."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.db import Database
from tests.model_files import SavedModel
from tests.service.test_methods import _dataset, _model, _npy, _run


def test_mixed_groups_equal_the_all_lists_form(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["xgboost_regression_json"])
    body = {"kind": "permutation_importance", "model_id": model_id, "dataset_id": dataset_id}
    mixed = _run(client, db, {**body, "params": {"features": [["f0", "f1"], "f2"],
                                                 "n_repeats": 3}})
    lists = _run(client, db, {**body, "params": {"features": [["f0", "f1"], ["f2"]],
                                                 "n_repeats": 3}})
    assert mixed["params"]["features"] == [["f0", "f1"], "f2"]
    np.testing.assert_array_equal(_npy(client, mixed["id"], "importances"),
                                  _npy(client, lists["id"], "importances"))
    summaries = [client.get(f"/v1/jobs/{job['id']}/result").json() for job in (mixed, lists)]
    assert [i["feature"] for i in summaries[0]["importances"]] == ["f0+f1", "f2"]
    assert summaries[0]["importances"] == summaries[1]["importances"]


def test_bare_names_and_groups_are_checked_alike(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    dataset_id = _dataset(client)
    model_id = _model(client, saved_models["xgboost_regression_json"])
    for features, fragment in (([["f0", "f1"], "nope"], "nope"),
                               ([["f0", "nope"], "f2"], "nope"),
                               ([[], "f2"], "at least one feature")):
        r = client.post("/v1/jobs", json={"kind": "permutation_importance",
                                          "model_id": model_id, "dataset_id": dataset_id,
                                          "params": {"features": features}})
        assert r.status_code == 422, r.text
        assert fragment in r.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []
