"""A job's params: one schema, checked against the model once, at POST, and stored
resolved (the model-dependent defaults filled in), so that the stored params say what ran.

The job process builds the method's params from the stored ones without checking them
again; the tests here run it in this process (as a worker's job process would) to count
the checks through POST and run alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

import explainers.feature_vectors
import explainers.permutation
import service.methods.feature_vectors
import service.methods.permutation
from explainers.rashomon import RashomonParams
from service.config import Settings
from service.db import Database
from service.jobs.queue import claim_next_job
from service.jobs.tables import JobRecord
from service.jobs.worker import Worker, _run_job
from service.startup import method_registry
from tests.model_files import SavedModel
from tests.service.jobs_testkinds import job_row
from tests.service.test_datasets import assert_problem
from tests.service.test_methods import RASHOMON_SMALL, _dataset, _model


class _Events:
    """The job process's pipe to its worker: the messages, kept."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        self.messages.append(message)


def _run_here(db: Database, settings: Settings, job_id: str, kind: str) -> None:
    """Claim the job and run it in this process, as its job process would."""
    lease = claim_next_job(db, worker="here", queues=["any", "cpu"], kinds=[kind],
                           prefer_gpu=False, lease_seconds=120)
    assert lease is not None and lease.job_id == job_id
    spec = Worker(db, settings, method_registry(settings))._job_spec(lease)
    events: Any = _Events()
    assert _run_job(spec, db, events, threading.Event()) == ("succeeded",)


def _post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    return job


def _count_calls(monkeypatch: pytest.MonkeyPatch, owners: tuple[object, ...], name: str
                 ) -> list[int]:
    """Count the calls of the function ``name`` of ``owners`` (modules or a class that
    hold it), whichever of them the caller reaches it through."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(owners[0], name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    for owner in owners:
        monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize(("kind", "model", "target", "params", "resolved"), [
    ("permutation_importance", "xgboost_regression_json", "regression", {},
     {"scoring": "r2"}),
    ("permutation_importance", "xgboost_binary_json", "binary", {"n_repeats": 2},
     {"scoring": "accuracy", "n_repeats": 2}),
    ("permutation_importance", "xgboost_binary_json", "binary", {"scoring": "roc_auc"},
     {"scoring": "roc_auc"}),
    ("rashomon_interactions", "onnx_mlp_regression", "regression", {}, {"loss": "mse"}),
    ("rashomon_interactions", "xgboost_binary_json", "binary", {"order": 3},
     {"loss": "log_loss", "order": 3}),
    ("rashomon_interactions", "xgboost_binary_json", "binary", {"loss": "roc_auc"},
     {"loss": "roc_auc"}),
    ("tree_shap", "xgboost_regression_json", "regression", {"interactions": True},
     {"max_rows": 10_000}),
])
def test_stored_params_are_the_resolved_ones(
        client: TestClient, db: Database, saved_models: dict[str, SavedModel], kind: str,
        model: str, target: str, params: dict[str, Any], resolved: dict[str, Any]) -> None:
    job = _post(client, {"kind": kind, "model_id": _model(client, saved_models[model]),
                         "dataset_id": _dataset(client, target), "params": params})
    stored = job_row(db, job["id"]).params
    assert {k: stored[k] for k in resolved} == resolved
    assert job["params"] == stored == client.get(f"/v1/jobs/{job['id']}").json()["params"]


PER_KIND = {
    "permutation_importance": (
        "xgboost_regression_json", {"n_repeats": 2, "features": [["f0", "f1"], "f2"]}),
    "rashomon_interactions": ("onnx_mlp_regression", RASHOMON_SMALL),
    "feature_vectors": ("xgboost_regression_json", {"feature_groups": {"pair": ["f0", "f1"]}}),
}


def _validating(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[int]:
    """Count the calls of the method's validation of its params against a model."""
    if kind == "permutation_importance":
        return _count_calls(monkeypatch, (explainers.permutation, service.methods.permutation),
                            "validate_permutation_params")
    if kind == "rashomon_interactions":
        return _count_calls(monkeypatch, (RashomonParams,), "validate")
    return _count_calls(monkeypatch, (explainers.feature_vectors,
                                      service.methods.feature_vectors),
                        "check_feature_groups")


@pytest.mark.parametrize("kind", sorted(PER_KIND))
def test_params_are_validated_once_per_job(
        client: TestClient, db: Database, settings: Settings,
        saved_models: dict[str, SavedModel], monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    model, params = PER_KIND[kind]
    body = {"kind": kind, "model_id": _model(client, saved_models[model]),
            "dataset_id": _dataset(client), "params": params}
    calls = _validating(monkeypatch, kind)
    job = _post(client, body)
    assert len(calls) == 1  # check; the estimate reuses what it resolved
    _run_here(db, settings, job["id"], kind)
    assert len(calls) == 1  # the job process built the stored params as they are
    assert job_row(db, job["id"]).status == "succeeded"
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 200


@pytest.mark.parametrize(("kind", "field", "default", "summary_key"), [
    ("permutation_importance", "scoring", "r2", "scoring"),
    ("rashomon_interactions", "loss", "mse", "loss"),
])
def test_a_job_stored_unresolved_runs_with_the_default(
        client: TestClient, db: Database, settings: Settings,
        saved_models: dict[str, SavedModel], kind: str, field: str, default: str,
        summary_key: str) -> None:
    """A job queued before its params were stored resolved: the default is the same."""
    model, params = PER_KIND[kind]
    job = _post(client, {"kind": kind, "model_id": _model(client, saved_models[model]),
                         "dataset_id": _dataset(client), "params": params})
    with db.session() as session:
        row = session.get(JobRecord, job["id"])
        assert row is not None and row.params[field] == default
        row.params = {**row.params, field: None}
    _run_here(db, settings, job["id"], kind)
    assert client.get(f"/v1/jobs/{job['id']}/result").json()[summary_key] == default


def test_feature_groups_that_overlap_or_take_a_column_name_are_422(
        client: TestClient, saved_models: dict[str, SavedModel]) -> None:
    body = {"kind": "feature_vectors", "dataset_id": _dataset(client),
            "model_id": _model(client, saved_models["xgboost_regression_json"])}
    for groups, fragment in (({"a": ["f0", "f1"], "b": ["f1"]}, "two feature groups"),
                             ({"f2": ["f0", "f1"]}, "rename the group"),
                             ({"a": ["f0", "nope"]}, "not features of the model")):
        problem = assert_problem(client.post("/v1/jobs", json={
            **body, "params": {"feature_groups": groups}}), 422, "invalid_params")
        assert fragment in problem["detail"]
    # Model-free, the method groups one-hot columns itself: groups would be ignored.
    problem = assert_problem(client.post("/v1/jobs", json={
        "kind": "feature_vectors", "dataset_id": body["dataset_id"],
        "params": {"feature_groups": {"a": ["f0", "f1"]}}}), 422, "invalid_params")
    assert "Leave feature_groups out" in problem["detail"]
    assert client.get("/v1/jobs").json()["items"] == []
