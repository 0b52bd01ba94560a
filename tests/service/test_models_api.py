"""Model uploads over HTTP: every format, the Model document, hostile files, deletion."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db import Database
from service.tables import Blob
from tests.model_files import FEATURE_NAMES, SavedModel
from tests.service.test_datasets import assert_problem

EXPECTED = {
    # name: (format, kind, task, n_outputs, classes)
    "xgboost_regression_json": ("xgboost", "tree", "regression", 1, None),
    "xgboost_binary_ubj": ("xgboost", "tree", "binary", 1, [0, 1]),
    "xgboost_multiclass_json": ("xgboost", "tree", "multiclass", 3, [0, 1, 2]),
    "lightgbm_categorical": ("lightgbm", "tree", "binary", 1, [0, 1]),
    "lightgbm_multiclass": ("lightgbm", "tree", "multiclass", 3, [0, 1, 2]),
    "sklearn_rf_multiclass": ("sklearn", "tree", "multiclass", 3, [0, 1, 2]),
    "sklearn_gbm_binary": ("sklearn", "tree", "binary", 1, [0, 1]),
    "sklearn_hgb_regression": ("sklearn", "tree", "regression", 1, None),
    "onnx_mlp_regression": ("onnx", "neural", "regression", 1, None),
}


def _blob_count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Blob)) or 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upload_detects_and_describes_the_model(client: TestClient, name: str,
                                                saved_models: dict[str, SavedModel]) -> None:
    saved = saved_models[name]
    fmt, kind, task, n_outputs, classes = EXPECTED[name]
    r = client.post("/v1/models", files={"file": (saved.path.name, saved.path.read_bytes())})
    assert r.status_code == 201, r.text
    model = r.json()
    assert r.headers["location"] == f"/v1/models/{model['id']}"
    assert model["id"].startswith("mdl_")
    assert (model["format"], model["kind"], model["task"]) == (fmt, kind, task)
    assert model["n_outputs"] == n_outputs
    if classes is not None:
        assert [int(c) for c in model["classes"]] == classes
    assert model["n_features"] == saved.X.shape[1]
    if kind == "tree":
        assert model["details"]["n_trees"] >= 1 and model["details"]["max_depth"] >= 1
    assert model["details"]["library_version"]
    assert client.get(f"/v1/models/{model['id']}").json() == model


def test_feature_names_from_the_model_or_the_form(client: TestClient,
                                                  saved_models: dict[str, SavedModel]) -> None:
    xgb = saved_models["xgboost_regression_json"]
    model = client.post("/v1/models", files={"file": ("m.json", xgb.path.read_bytes())}).json()
    assert model["feature_names"] == FEATURE_NAMES
    onnx = saved_models["onnx_mlp_regression"]
    names = ["a", "b", "c", "d", "e"]
    r = client.post("/v1/models", content=onnx.path.read_bytes(),
                    params={"format": "onnx", "name": "mlp",
                            "feature_names": json.dumps(names)},
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.json()["feature_names"] == names and r.json()["name"] == "mlp"


def test_pickle_is_refused_unless_trusted(make_client: Callable[..., TestClient], db: Database,
                                          saved_models: dict[str, SavedModel]) -> None:
    estimator = saved_models["sklearn_dt_regression"].native
    body = pickle.dumps(estimator)
    client = make_client()
    problem = assert_problem(client.post("/v1/models", files={"file": ("m.pkl", body)}),
                             415, "untrusted_format")
    assert "skops" in problem["detail"]
    assert _blob_count(db) == 0
    trusted = make_client(trust_uploads=True)
    r = trusted.post("/v1/models", files={"file": ("m.pkl", body)})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "tree"


@pytest.mark.parametrize(
    ("filename", "body", "status", "code"),
    [
        ("truncated.json", b'{"learner": {"gradient_booster": {"model": {"trees": [', 422,
         "invalid_model"),
        ("notes.txt", b"these are my notes, not a model\n", 415, "unsupported_format"),
        ("huge.txt", b"tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\n"
         b"max_feature_idx=3\nobjective=regression\nfeature_names=a b c d\n"
         b"tree_sizes=99999999999\n\nTree=0\nnum_leaves=2000000000\n", 422, "invalid_model"),
        ("empty.json", b"", 422, "invalid_model"),
    ],
)
def test_broken_models_are_refused_and_the_server_lives(
    client: TestClient, db: Database, filename: str, body: bytes, status: int, code: str
) -> None:
    assert_problem(client.post("/v1/models", files={"file": (filename, body)}), status, code)
    assert _blob_count(db) == 0
    assert client.get("/healthz").status_code == 200


def test_truncated_ubjson_is_refused(client: TestClient,
                                     saved_models: dict[str, SavedModel]) -> None:
    data = saved_models["xgboost_binary_ubj"].path.read_bytes()
    r = client.post("/v1/models", files={"file": ("m.ubj", data[: len(data) // 2])})
    assert r.status_code == 422 and r.json()["code"] in ("invalid_model",
                                                        "model_inspection_failed")
    assert client.get("/healthz").status_code == 200


def test_bad_form_fields_are_400(client: TestClient,
                                 saved_models: dict[str, SavedModel]) -> None:
    body = saved_models["xgboost_regression_json"].path.read_bytes()
    r = client.post("/v1/models", files={"file": ("m.json", body)},
                    data={"feature_names": "a,b,c"})
    assert_problem(r, 400, "invalid_field")


def test_list_get_delete_and_isolation(client: TestClient, db: Database,
                                       saved_models: dict[str, SavedModel]) -> None:
    body = saved_models["lightgbm_multiclass"].path.read_bytes()
    ids = [client.post("/v1/models", files={"file": ("m.txt", body)}).json()["id"]
           for _ in range(3)]
    page = client.get("/v1/models?limit=2").json()
    assert [m["id"] for m in page["items"]] == sorted(ids, reverse=True)[:2]
    rest = client.get(f"/v1/models?limit=2&cursor={page['next_cursor']}").json()
    assert [m["id"] for m in rest["items"]] == [min(ids)] and rest["next_cursor"] is None
    assert client.delete(f"/v1/models/{ids[0]}").status_code == 204
    assert_problem(client.get(f"/v1/models/{ids[0]}"), 404, "not_found")
    assert _blob_count(db) == 2


class Marker:
    """A type no allowlist knows."""


def test_untrusted_skops_and_joblib_uploads(client: TestClient, db: Database, tmp_path,  # type: ignore[no-untyped-def]
                                            saved_models: dict[str, SavedModel]) -> None:
    import joblib
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipe = make_pipeline(FunctionTransformer(eval), saved_models["sklearn_dt_regression"].native)
    path = tmp_path / "fn.skops"
    skops.io.dump(pipe, path)
    body = assert_problem(client.post("/v1/models", files={"file": ("fn.skops",
                                                                    path.read_bytes())}),
                          422, "untrusted_type")
    assert "builtins.eval" in body["detail"]
    joblib.dump(saved_models["sklearn_dt_regression"].native, tmp_path / "m.joblib", compress=3)
    assert_problem(client.post("/v1/models", files={
        "file": ("m.joblib", (tmp_path / "m.joblib").read_bytes())}), 415, "untrusted_format")
    assert _blob_count(db) == 0
    assert client.get("/healthz").status_code == 200
