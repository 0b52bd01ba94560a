"""A job's progress is overall: it only goes up, from 0 to 1 over the whole job, while
``stage`` names the step; running jobs carry an ETA."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from service.db import Database
from tests.model_files import SavedModel
from tests.service.jobs_testkinds import post_job, upload_dataset, wait_for
from tests.service.test_methods import _dataset, _model

# Four stages (reference, search, main effects, interactions) of about 3 s in all with a
# random forest, whose every predict call takes milliseconds: the events see most.
RASHOMON_STAGED = {"features": ["f0", "f1", "f2", "f3"], "shuffle_times": 50,
                   "delta": 0.1, "max_rows": 240, "epsilon_rate": 0.1}


def _events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        lines = list(response.iter_lines())
    return [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]


def test_progress_only_goes_up_across_the_stages_of_a_real_job(
        worker_client: tuple[TestClient, Database],
        saved_models: dict[str, SavedModel]) -> None:
    client, _ = worker_client
    response = client.post("/v1/jobs", json={
        "kind": "rashomon_interactions", "dataset_id": _dataset(client, "multiclass"),
        "model_id": _model(client, saved_models["sklearn_rf_multiclass"]),
        "params": RASHOMON_STAGED})
    assert response.status_code == 202, response.text
    events = _events(client, response.json()["id"])
    progress = [(e["progress"], e["stage"]) for e in events]
    assert [p for p, _ in progress] == sorted(p for p, _ in progress), progress
    assert events[-1]["status"] == "succeeded" and events[-1]["progress"] == 1.0
    assert events[-1]["eta_seconds"] is None
    # The events saw the job pass from one of the method's stages to another.
    running = [e for e in events if e["status"] == "running"]
    stages = list(dict.fromkeys(e["stage"] for e in running
                                if e["stage"] in ("search", "main_effects", "interactions")))
    assert len(stages) >= 2, progress
    assert all(0 < e["progress"] <= 1 for e in running if e["stage"] in stages), progress


def test_a_running_job_has_an_eta(worker_client: tuple[TestClient, Database]) -> None:
    client, _ = worker_client
    dataset_id = upload_dataset(client)
    job_id = post_job(client, "test_sleep", dataset_id, steps=40, step_seconds=0.1)["id"]
    job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] ==
                   "running" and j["progress"] >= 0.25 and j, what="a quarter done")
    assert job["eta_seconds"] is not None
    assert 0.5 <= job["eta_seconds"] <= 20, job
    done = wait_for(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] ==
                    "succeeded" and j, what="the job to end")
    assert done["eta_seconds"] is None and done["progress"] == 1.0
