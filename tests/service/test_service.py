"""Health, readiness, metrics, the OpenAPI document and problem documents for everything."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.test_datasets import CSV, assert_problem


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readiness_fails_on_an_unmigrated_database(make_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert_problem(client.get("/readyz"), 503, "not_migrated")


def test_metrics_count_requests_and_upload_bytes(client: TestClient) -> None:
    client.post("/v1/datasets", files={"file": ("d.csv", CSV)})
    text = client.get("/metrics").text
    assert 'tabxai_http_requests_total{method="POST",route="/v1/datasets",status="201"}' in text
    assert "tabxai_http_request_duration_seconds_bucket" in text
    assert "tabxai_upload_bytes_total" in text


def test_openapi_describes_the_uploads(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "text/csv", "application/vnd.apache.parquet"} <= set(body)
    assert "/v1/models" in spec["paths"] and "/readyz" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing"), 404, "not_found")
    assert_problem(client.put("/v1/datasets"), 405, "method_not_allowed")
    assert_problem(client.get("/v1/datasets?limit=abc"), 422, "invalid_request")


def test_serve_stops_its_workers_on_sigterm(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TABXAI_DATA_DIR": str(tmp_path), "TABXAI_DATABASE_URL": database_url,
           "TABXAI_PORT": str(port), "TABXAI_WORKERS": "1"}
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and not workers:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            workers = [p for p in psutil.Process(serve.pid).children()
                       if "worker" in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert workers, "tabxai serve started no worker"
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived tabxai serve: {alive}"
    finally:
        if serve.poll() is None:
            serve.kill()
