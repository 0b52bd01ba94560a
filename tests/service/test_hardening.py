"""Hostile input and failing infrastructure: NUL characters, database outages, orphaned
workers, keys that stay required. Each answer is a 4xx/503 problem document, never a 500."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
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
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from service.db import Database, create_db_engine
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


@pytest.mark.postgres
def test_postgresql_stopping_mid_run_is_a_503_until_it_is_back(
        database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (TABXAI_TEST_DATABASE_URL)")
    with proxied_server(database_url, tmp_path) as (proxy, app_port):
        connection = http.client.HTTPConnection("127.0.0.1", app_port, timeout=30)

        def get(path: str) -> tuple[int, dict[str, str], bytes]:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()

        assert get("/v1/datasets")[0] == 200
        sock = connection.sock
        proxy.cut()
        for path in ("/v1/datasets", "/v1/models", "/readyz"):
            status, headers, body = get(path)
            assert status == 503, (path, body)
            assert int(headers["retry-after"]) > 0
            assert connection.sock is sock, f"the server closed the connection after {path}"
        proxy.restore()
        assert get("/v1/datasets")[0] == 200, "the service recovers with the database"
        assert get("/readyz")[0] == 200
        connection.close()


@pytest.mark.postgres
def test_a_request_s_transaction_ends_before_its_response(
        database_url: str, tmp_path: Path) -> None:
    """A commit that fails must be the response (503), never an error after a 2xx: the
    response may not leave before the request's last COMMIT has been answered."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL (TABXAI_TEST_DATABASE_URL)")
    with proxied_server(database_url, tmp_path) as (proxy, app_port), \
            socket.create_connection(("127.0.0.1", app_port), timeout=30) as http_socket:
        proxy.hold_commits()
        http_socket.sendall(b"GET /v1/datasets HTTP/1.1\r\nHost: t\r\n\r\n")
        # The workspace lookup's transaction, then the endpoint's: no response before both.
        for _ in range(2):
            assert proxy.held.acquire(timeout=20), "no COMMIT reached the proxy"
            readable, _, _ = select.select([http_socket], [], [], 0.3)
            assert not readable, "the response left before its transaction ended"
            proxy.release_commit()
        assert _read_response(http_socket).startswith(b"HTTP/1.1 200")


@contextmanager
def proxied_server(database_url: str, tmp_path: Path) -> Iterator[tuple[CuttableProxy, int]]:
    """The app under uvicorn, reaching PostgreSQL through a proxy the test controls (only
    this app is affected, not other tests sharing the server)."""
    engine = create_db_engine(database_url)
    with engine.connect() as connection:
        info = connection.connection.dbapi_connection.info  # type: ignore[union-attr]
        host, port = info.host, info.port
    engine.dispose()
    proxy = CuttableProxy(host, port)
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    settings = Settings(data_dir=tmp_path / "data",
                        database_url=url.render_as_string(hide_password=False))
    try:
        with live_server(settings) as app_port:
            yield proxy, app_port
    finally:
        proxy.close()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


# The simple-query message psycopg sends to commit: 'Q', int32 length, "COMMIT\0".
_COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class CuttableProxy:
    """A TCP proxy to PostgreSQL (TCP or Unix socket) whose link can be cut and restored;
    while cut, every connection through it is closed at once. ``hold_commits`` stops
    each COMMIT on its way to the server until ``release_commit``."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = True
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._holding = False
        self.held = threading.Semaphore(0)  # one release per COMMIT stopped
        self._release = threading.Semaphore(0)
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_commits(self) -> None:
        self._holding = True

    def release_commit(self) -> None:
        self._release.release()

    def cut(self) -> None:
        with self._lock:
            self._up = False
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    client.close()
                    continue
                host, port = self._target
                if host.startswith("/"):
                    upstream = socket.socket(socket.AF_UNIX)
                    upstream.connect(f"{host}/.s.PGSQL.{port}")
                else:
                    upstream = socket.create_connection((host, port))
                self._open += [client, upstream]
            for a, b, to_server in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, to_server), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if to_server and self._holding and _COMMIT_MESSAGE in data:
                    self.held.release()
                    self._release.acquire()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


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
