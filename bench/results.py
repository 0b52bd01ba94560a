"""Benchmark large result arrays: 1,000,000 x 50 float32 (200 MB) written by a job while
it computes, then streamed from the API as .npy and .parquet.

    .venv/bin/python -m bench.results                    # SQLite
    .venv/bin/python -m bench.results --database-url postgresql+psycopg:///test

Real processes: one ``tabxai worker`` (its job process writes the array in 20,000-row
appends through ``ctx.array_writer``) and ``tabxai serve`` (uvicorn, no workers of its
own). Peak RSS of the worker, of the job process and of the API process is sampled with
psutil every 20 ms and compared with the array's size: none should hold the array whole.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from service.registry import CheckContext, JobKind, JobOutput, RunContext

ROOT = Path(__file__).resolve().parents[1]
APPEND_ROWS = 20_000


class BigArrayParams(BaseModel):
    n_rows: int = Field(1_000_000, ge=1)
    n_columns: int = Field(50, ge=1)


def _check(ctx: CheckContext[BigArrayParams]) -> None:
    return None


def _estimate(ctx: CheckContext[BigArrayParams]) -> dict[str, Any]:
    return {"rows_to_predict": 0, "seconds": ctx.params.n_rows / 1e5}


def _run_big_array(ctx: RunContext[BigArrayParams]) -> JobOutput:
    n, f = ctx.params.n_rows, ctx.params.n_columns
    writer = ctx.array_writer("values", "float32", (f,))
    rng = np.random.default_rng(0)
    for start in range(0, n, APPEND_ROWS):
        writer.append(rng.standard_normal((min(APPEND_ROWS, n - start), f), dtype=np.float32))
        ctx.progress(start / n, "writing")
    return JobOutput(summary={"n_rows": n, "n_columns": f})


# Registered by the API and the worker of the benchmark through TABXAI_EXTRA_KINDS.
KIND = JobKind(name="bench_big_array", params_model=BigArrayParams, needs_model=False,
               check=_check, estimate=_estimate, run=_run_big_array)


class PeakRss(threading.Thread):
    """Samples the resident set size of a process and of each of its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.own = 0
        self.children = 0
        self._stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop.wait(0.02):
            try:
                self.own = max(self.own, self.process.memory_info().rss)
                for child in self.process.children(recursive=True):
                    self.children = max(self.children, child.memory_info().rss)
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=50)
    args = parser.parse_args()
    from bench.job_queue import _database

    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = _database(args.database_url, Path(tmp))
        try:
            _bench(url, Path(tmp), args.rows, args.columns)
        finally:
            cleanup()


def _bench(url: str, tmp: Path, n_rows: int, n_columns: int) -> None:
    import httpx

    size = n_rows * n_columns * 4
    print(f"array: {n_rows:,} x {n_columns} float32 = {size / 1e6:,.0f} MB "
          f"({'SQLite' if url.startswith('sqlite') else 'PostgreSQL'})")
    port = _free_port()
    env = {**os.environ, "TABXAI_DATABASE_URL": url, "TABXAI_DATA_DIR": str(tmp / "data"),
           "TABXAI_EXTRA_KINDS": "bench.results", "TABXAI_LOG_LEVEL": "WARNING",
           "TABXAI_WORKERS": "0", "TABXAI_PORT": str(port)}
    api = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            _wait_ready(client)
            dataset = client.post("/v1/datasets?name=b", content=b"a,b\n1,2\n",
                                  headers={"Content-Type": "text/csv"}).json()["id"]
            job_id = client.post("/v1/jobs", json={
                "kind": "bench_big_array", "dataset_id": dataset,
                "params": {"n_rows": n_rows, "n_columns": n_columns}}).json()["id"]
            worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker",
                                       "--device", "cpu"], env=env, cwd=ROOT)
            worker_rss = PeakRss(worker.pid)
            worker_rss.start()
            job = _wait_job(client, job_id)
            worker_rss.stop()
            seconds = (_time(job["finished_at"]) - _time(job["started_at"]))
            print(f"job: written in {seconds:.1f} s ({size / 1e6 / seconds:,.0f} MB/s); "
                  f"peak RSS worker {worker_rss.own / 2**20:,.0f} MiB, job process "
                  f"{worker_rss.children / 2**20:,.0f} MiB")
            api_rss = PeakRss(api.pid)
            api_rss.start()
            idle = api_rss.process.memory_info().rss
            for suffix in ("npy", "parquet"):
                started = time.perf_counter()
                received = 0
                with client.stream("GET", f"/v1/jobs/{job_id}/result/arrays/values.{suffix}"
                                   ) as response:
                    response.raise_for_status()
                    for data in response.iter_bytes():
                        received += len(data)
                elapsed = time.perf_counter() - started
                print(f".{suffix}: {received / 1e6:,.0f} MB in {elapsed:.1f} s "
                      f"({received / 1e6 / elapsed:,.0f} MB/s); API peak RSS so far "
                      f"{api_rss.own / 2**20:,.0f} MiB (idle {idle / 2**20:,.0f} MiB)")
            api_rss.stop()
    finally:
        for process in (worker, api):
            if process is not None:
                process.terminate()
                process.wait(30)


def _wait_ready(client: Any) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the API did not start")


def _wait_job(client: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return job
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"the job did not succeed: {job['error']}")
        time.sleep(0.2)
    raise TimeoutError("the job did not finish")


def _time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
