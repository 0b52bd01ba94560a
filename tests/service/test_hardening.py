"""Hostile input and failing infrastructure: NUL characters, database outages, orphaned
workers, keys that stay required. Each answer is a 4xx/503 problem document, never a 500."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.db import Database
from tests.service.jobs_testkinds import (
    MODULE,
    ROOT,
    job_row,
    post_job,
    upload_dataset,
    wait_for,
)
from tests.service.test_datasets import CSV, assert_problem

# -- NUL characters: PostgreSQL cannot store them; both databases refuse them alike --


def test_a_nul_in_a_path_id_is_not_found(client: TestClient) -> None:
    for path in ("/v1/datasets/ds_%00", "/v1/datasets/ds_a%00b/rows", "/v1/models/mdl_%00",
                 "/v1/jobs/job_%00", "/v1/jobs/job_%00/result",
                 "/v1/jobs/job_x/result/arrays/a%00b.csv"):
        body = assert_problem(client.get(path), 404, "not_found")
        assert "NUL" in body["detail"], path
    assert_problem(client.delete("/v1/models/mdl_%00"), 404, "not_found")


def test_a_nul_in_a_query_value_is_refused(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/jobs?kind=tree%00shap"), 422, "nul_character")
    assert "'kind'" in body["detail"] and "NUL" in body["detail"]
    assert_problem(client.get("/v1/datasets?cursor=%00"), 422, "nul_character")
    response = client.post("/v1/datasets?name=a%00b", content=CSV,
                           headers={"Content-Type": "text/csv"})
    assert "'name'" in assert_problem(response, 422, "nul_character")["detail"]
    assert client.get("/v1/datasets").json()["items"] == [], "nothing was stored"


def test_a_nul_in_a_form_field_or_json_body_is_refused(client: TestClient) -> None:
    response = client.post("/v1/datasets", files={"file": ("d.csv", CSV)},
                           data={"name": "a\x00b"})
    assert "NUL" in assert_problem(response, 422, "nul_character")["detail"]
    assert client.get("/v1/datasets").json()["items"] == [], "nothing was stored"
    dataset_id = client.post("/v1/datasets", files={"file": ("d.csv", CSV)}).json()["id"]
    response = client.post("/v1/jobs", json={"kind": "tree_shap", "model_id": "mdl_\x00",
                                             "dataset_id": dataset_id})
    assert_problem(response, 422, "nul_character")


def test_a_value_too_long_for_its_column_is_refused_or_kept(client: TestClient,
                                                            db: Database) -> None:
    response = client.post(f"/v1/datasets?name={'n' * 300}", content=CSV,
                           headers={"Content-Type": "text/csv"})
    if db.is_sqlite:  # SQLite does not enforce VARCHAR lengths
        assert response.status_code == 201, response.text
    else:
        body = assert_problem(response, 422, "invalid_value")
        assert "too long" in body["detail"]


# -- database outage: 503 + Retry-After, and the connection stays usable -------------


@contextmanager
def live_server(settings: Settings) -> Iterator[int]:
    """The real app under uvicorn in a thread of the test process; yields its port."""
    app = create_app(settings, migrate=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("outage", ["sqlite_missing_directory", "postgresql_refused"])
def test_a_database_outage_is_a_503_that_keeps_the_connection(
        outage: str, tmp_path: Path) -> None:
    if outage == "sqlite_missing_directory":
        url = f"sqlite:///{tmp_path / 'gone' / 'tabxai.db'}"
    else:  # a PostgreSQL server that is down: nothing listens on the port
        url = f"postgresql+psycopg://tabxai@127.0.0.1:{free_port()}/tabxai?connect_timeout=2"
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    with live_server(settings) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        connection.connect()
        sock = connection.sock
        for method, path in [("GET", "/v1/datasets"), ("GET", "/v1/jobs/job_x"),
                             ("POST", "/v1/jobs/job_x/cancel"), ("GET", "/readyz"),
                             ("GET", "/v1/models")]:
            connection.request(method, path)
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 503, (path, body)
            assert response.getheader("content-type") == "application/problem+json"
            assert int(response.getheader("retry-after", "0")) > 0, path
            assert body["code"] == ("database_unreachable" if path == "/readyz"
                                    else "database_unavailable")
            assert "try again" in body["detail"].lower() or path == "/readyz"
            assert connection.sock is sock, f"the server closed the connection after {path}"
        connection.close()


# -- a killed `tabxai serve` leaves no worker or job process behind ------------------


def test_workers_and_their_jobs_exit_when_serve_is_killed(
        tmp_path: Path, database_url: str, db: Database) -> None:
    port = free_port()
    env = {**os.environ, "TABXAI_DATA_DIR": str(tmp_path), "TABXAI_DATABASE_URL": database_url,
           "TABXAI_PORT": str(port), "TABXAI_WORKERS": "1", "TABXAI_WORKER_DEVICE": "cpu",
           "TABXAI_EXTRA_KINDS": MODULE, "TABXAI_POLL_SECONDS": "0.05",
           "TABXAI_LOG_LEVEL": "WARNING"}
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    descendants: list[psutil.Process] = []
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return serve.poll() is not None  # died: the assertion below says so

        wait_for(ready, 60, "tabxai serve to listen")
        assert serve.poll() is None, "tabxai serve exited"
        with httpx.Client(base_url=base, timeout=10) as client:
            dataset_id = upload_dataset(client)
            job_id = post_job(client, "test_sleep", dataset_id, steps=1000,
                              step_seconds=0.05)["id"]
            wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"] > 0, 60,
                     "a worker to run the job")
        workers = psutil.Process(serve.pid).children()
        descendants = psutil.Process(serve.pid).children(recursive=True)
        assert len(workers) == 1 and "worker" in " ".join(workers[0].cmdline())
        fork_servers = [p for p in workers[0].children() if "forkserver" in " ".join(p.cmdline())]
        assert fork_servers and fork_servers[0].children(), "no job process is running"
        serve.kill()
        serve.wait(10)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert not alive, f"outlived a killed tabxai serve: {alive}"
        job = job_row(db, job_id)
        assert job.status == "queued" and job.attempts == 0, "the worker gave the job back"
    finally:
        if serve.poll() is None:
            serve.kill()
        for process in descendants:
            with contextlib.suppress(psutil.Error):
                process.kill()
