"""A classifier's classes against the dataset's target labels, checked at POST.

A model trained on 0/1 and a table whose target says "no"/"yes" cannot be scored; the
job is refused before it is queued, naming both, and ``label_map`` says which class each
label is.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from service.catalog.column_head import read_column_head
from service.catalog.tables import DatasetRecord
from service.db import Database
from tests.model_files import FEATURE_NAMES, SavedModel, make_data
from tests.service.test_datasets import assert_problem
from tests.service.test_methods import _model, _npy, _run

YES_NO = np.array(["no", "yes"])


def _yes_no_frame(n: int = 240) -> pd.DataFrame:
    X, y = make_data(n=n)
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    frame["y"] = YES_NO[y["binary"]]
    return frame


def _upload(client: TestClient, frame: pd.DataFrame, *, parquet: bool = False,
            gzipped: bool = False) -> str:
    if parquet:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer,
                       row_group_size=50)
        files = {"file": ("d.parquet", buffer.getvalue())}
    elif gzipped:
        files = {"file": ("d.csv.gz", gzip.compress(frame.to_csv(index=False).encode()))}
    else:
        files = {"file": ("d.csv", frame.to_csv(index=False))}
    r = client.post("/v1/datasets", files=files, data={"target": "y"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_string_labels_against_numeric_classes_are_422_before_queueing(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    model_id = _model(client, saved_models["xgboost_binary_json"])
    for stored in ({}, {"parquet": True}, {"gzipped": True}):
        dataset_id = _upload(client, _yes_no_frame(), **stored)
        for kind in ("permutation_importance", "rashomon_interactions"):
            for dry_run in ("false", "true"):
                body = assert_problem(client.post(
                    f"/v1/jobs?dry_run={dry_run}",
                    json={"kind": kind, "model_id": model_id, "dataset_id": dataset_id}),
                    422, "target_mismatch")
                detail = body["detail"]
                assert "'no', 'yes'" in detail and "[0, 1]" in detail, detail
                assert "label_map" in detail and '{"no": 0, "yes": 1}' in detail, detail
    assert client.get("/v1/jobs").json()["items"] == []


def test_label_map_scores_the_mapped_labels_as_scikit_learn_does(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    from sklearn.inspection import permutation_importance

    client, db = worker_client
    saved = saved_models["sklearn_gbm_binary"]
    frame = _yes_no_frame()
    job = _run(client, db, {
        "kind": "permutation_importance", "model_id": _model(client, saved),
        "dataset_id": _upload(client, frame),
        "params": {"scoring": "f1", "n_repeats": 3, "label_map": {"no": 0, "yes": 1}}})
    assert job["params"]["label_map"] == {"no": 0, "yes": 1}
    mapped = (frame["y"] == "yes").to_numpy().astype(np.int64)
    reference = permutation_importance(saved.native, frame[FEATURE_NAMES].to_numpy(), mapped,
                                       scoring="f1", n_repeats=3, random_state=0)
    np.testing.assert_allclose(_npy(client, job["id"], "importances"),
                               reference.importances, atol=1e-12)
    assert reference.importances.max() > 0  # the labels carry the signal once mapped


def test_label_map_for_rashomon_equals_the_job_on_class_labels(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, db = worker_client
    model_id = _model(client, saved_models["xgboost_binary_json"])
    params = {"features": ["f0", "f1"], "shuffle_times": 2, "max_rows": 120}
    words = _yes_no_frame()
    codes = words.assign(y=(words["y"] == "yes").astype(np.int64))
    mapped = _run(client, db, {
        "kind": "rashomon_interactions", "model_id": model_id,
        "dataset_id": _upload(client, words),
        "params": {**params, "label_map": {"no": 0, "yes": 1}}})
    plain = _run(client, db, {"kind": "rashomon_interactions", "model_id": model_id,
                              "dataset_id": _upload(client, codes), "params": params})
    for name in ("fis_clouds", "main_effect_clouds"):
        np.testing.assert_array_equal(_npy(client, mapped["id"], name),
                                      _npy(client, plain["id"], name))


def test_label_map_that_misses_a_label_or_names_no_class_is_422(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    model_id = _model(client, saved_models["xgboost_binary_json"])
    dataset_id = _upload(client, _yes_no_frame())
    body = {"kind": "permutation_importance", "model_id": model_id, "dataset_id": dataset_id}
    missing = assert_problem(client.post("/v1/jobs", json={
        **body, "params": {"label_map": {"no": 0}}}), 422, "target_mismatch")
    assert "'yes'" in missing["detail"] and "'no'" not in missing["detail"]
    wrong = assert_problem(client.post("/v1/jobs", json={
        **body, "params": {"label_map": {"no": 0, "yes": 2}}}), 422, "invalid_params")
    assert "'yes': 2" in wrong["detail"] and "[0, 1]" in wrong["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_numeric_labels_map_by_value(client: TestClient,
                                     saved_models: dict[str, SavedModel]) -> None:
    """1/2 labels for 0/1 classes: refused, then accepted with keys "1" and "2.0"."""
    model_id = _model(client, saved_models["xgboost_binary_json"])
    frame = _yes_no_frame()
    frame["y"] = np.where(frame["y"] == "yes", 2, 1)
    dataset_id = _upload(client, frame)
    body = {"kind": "permutation_importance", "model_id": model_id, "dataset_id": dataset_id}
    refused = assert_problem(client.post("/v1/jobs", json=body), 422, "target_mismatch")
    assert "the labels 2" in refused["detail"]  # 1 is a class; 2 is not
    accepted = client.post("/v1/jobs", json={**body, "params": {"label_map": {"1": 0,
                                                                              "2.0": 1}}})
    assert accepted.status_code == 202, accepted.text


def test_missing_labels_and_text_targets_for_regression_are_422(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    classifier = _model(client, saved_models["xgboost_binary_json"])
    regressor = _model(client, saved_models["xgboost_regression_json"])
    holes = _yes_no_frame()
    holes.loc[[3, 7], "y"] = None
    with_holes = _upload(client, holes)
    for body in ({"kind": "permutation_importance", "model_id": classifier},
                 {"kind": "rashomon_interactions", "model_id": classifier},
                 {"kind": "feature_vectors"}):
        problem = assert_problem(client.post("/v1/jobs", json={**body,
                                                               "dataset_id": with_holes}),
                                 422, "target_mismatch")
        assert "2 missing values" in problem["detail"]
    text_target = _upload(client, _yes_no_frame())
    problem = assert_problem(client.post("/v1/jobs", json={
        "kind": "permutation_importance", "model_id": regressor, "dataset_id": text_target}),
        422, "target_mismatch")
    assert "regression model" in problem["detail"]
    problem = assert_problem(client.post("/v1/jobs", json={
        "kind": "permutation_importance", "model_id": regressor, "dataset_id": text_target,
        "params": {"label_map": {"no": 0}}}), 422, "invalid_params")
    assert client.get("/v1/jobs").json()["items"] == []


def test_labels_that_are_classes_pass(client: TestClient,
                                      saved_models: dict[str, SavedModel]) -> None:
    """The check does not refuse what the job accepts: 0/1 labels, 0/1 classes."""
    model_id = _model(client, saved_models["xgboost_binary_json"])
    frame = _yes_no_frame()
    frame["y"] = (frame["y"] == "yes").astype(np.int64)
    r = client.post("/v1/jobs", json={"kind": "permutation_importance", "model_id": model_id,
                                      "dataset_id": _upload(client, frame, parquet=True)})
    assert r.status_code == 202, r.text


def test_the_target_is_read_only_as_far_as_the_caps(client: TestClient, db: Database) -> None:
    """POST reads the head of the target: all of it when small, a capped part when not."""
    frame = _yes_no_frame(n=20_000)
    for stored in ({}, {"parquet": True}, {"gzipped": True}):
        dataset_id = _upload(client, frame, **stored)
        with db.session(readonly=True) as session:
            record = session.get(DatasetRecord, dataset_id)
            assert record is not None
            whole = read_column_head(session, record, "y", max_rows=100_000)
            assert whole.to_pylist() == frame["y"].tolist()
            assert len(read_column_head(session, record, "y", max_rows=1_000)) == 1_000
            capped = read_column_head(session, record, "y", max_rows=100_000,
                                      max_bytes=1 << 16)
            assert 0 < len(capped) < 20_000, stored
            assert capped.to_pylist() == frame["y"].tolist()[:len(capped)]



def test_text_classes_and_a_bool_target(worker_client: tuple[TestClient, Database],
                                        tmp_path: Path) -> None:
    """A model trained on "neg"/"pos" and a True/False column: keys "false"/"true"."""
    import skops.io
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression

    client, db = worker_client
    frame = _yes_no_frame()
    labels = np.where(frame["y"] == "yes", "pos", "neg")
    model = LogisticRegression().fit(frame[FEATURE_NAMES].to_numpy(), labels)
    skops.io.dump(model, tmp_path / "text_classes.skops")
    r = client.post("/v1/models", files={
        "file": ("m.skops", (tmp_path / "text_classes.skops").read_bytes())})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == ["neg", "pos"]
    dataset_id = _upload(client, frame.assign(y=frame["y"] == "yes"))
    body = {"kind": "permutation_importance", "model_id": r.json()["id"],
            "dataset_id": dataset_id}
    refused = assert_problem(client.post("/v1/jobs", json=body), 422, "target_mismatch")
    assert "False, True" in refused["detail"] and "['neg', 'pos']" in refused["detail"]
    job = _run(client, db, {**body, "params": {"label_map": {"false": "neg", "true": "pos"},
                                               "n_repeats": 3}})
    reference = permutation_importance(model, frame[FEATURE_NAMES].to_numpy(), labels,
                                       n_repeats=3, random_state=0)
    np.testing.assert_allclose(_npy(client, job["id"], "importances"),
                               reference.importances, atol=1e-12)
