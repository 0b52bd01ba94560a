"""Benchmark the job queue: latency from POST to running, and claim throughput.

    .venv/bin/python -m bench.job_queue                      # SQLite (named-pipe wake-up)
    .venv/bin/python -m bench.job_queue --database-url postgresql+psycopg:///test
                                                         # PostgreSQL (LISTEN/NOTIFY)

1. Latency: one idle ``tabxai worker`` process; each job is POSTed through the real app
   (in-process client) and its ``started_at - created_at`` is read back: the time from
   the committed insert to the worker's claim. Target on PostgreSQL: under 100 ms.
2. Throughput, end to end: N jobs of a no-op kind run by 4 worker processes (each job in
   its own job process, as in production): jobs/s.
3. Claim throughput: 4 threads running the claim -> fenced complete loop without job
   processes: the queue's own ceiling, claims/s.

On PostgreSQL the benchmark works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from service.registry import CheckContext, JobKind, JobOutput, RunContext

log = logging.getLogger("bench.job_queue")


class NoParams(BaseModel):
    pass


def _check(ctx: CheckContext[NoParams]) -> None:
    return None


def _estimate(ctx: CheckContext[NoParams]) -> dict[str, Any]:
    return {"rows_to_predict": 0, "seconds": 0.0}


def _run_noop(ctx: RunContext[NoParams]) -> JobOutput:
    return JobOutput(summary={})


# Registered by the benchmark's app (extra_kinds) and workers (TABXAI_EXTRA_KINDS).
KIND = JobKind(name="bench_noop", params_model=NoParams, needs_model=False,
               check=_check, estimate=_estimate, run=_run_noop)
MODULE = "bench.job_queue"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a SQLite file)")
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--throughput-jobs", type=int, default=400)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = _database(args.database_url, Path(tmp))
        try:
            _bench(url, Path(tmp), args.latency_jobs, args.throughput_jobs)
        finally:
            cleanup()


def _bench(url: str, tmp: Path, latency_jobs: int, throughput_jobs: int) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from service.db import Database
    from service.migrate import upgrade

    settings = Settings(data_dir=tmp / "data", database_url=url, extra_kinds=[MODULE])
    db = Database(url)
    upgrade(db.engine)
    backend = "PostgreSQL (LISTEN/NOTIFY)" if not db.is_sqlite else \
        f"SQLite (named-pipe wake-up; polling every {settings.poll_seconds} s behind it)"
    print(f"backend: {backend}")
    with TestClient(create_app(settings, migrate=False)) as client:
        dataset = client.post("/v1/datasets?name=b", content="a,b\n1,2\n",
                              headers={"Content-Type": "text/csv"}).json()["id"]
        body = {"kind": "bench_noop", "dataset_id": dataset}

        worker = _start_workers(url, tmp, 1)[0]
        try:
            _wait_done(db, [client.post("/v1/jobs", json=body).json()["id"]], 120)
            latencies = []
            for _ in range(latency_jobs):
                job_id = client.post("/v1/jobs", json=body).json()["id"]
                row = _wait_done(db, [job_id], 30)[0]
                latencies.append((row.started_at - row.created_at).total_seconds() * 1000)
                # A random pause, so that POSTs fall at random points of the polling cycle.
                time.sleep(random.uniform(0.05, 0.05 + settings.poll_seconds))
        finally:
            _stop(worker)
        latencies.sort()
        print(f"POST->running latency over {latency_jobs} jobs: median "
              f"{statistics.median(latencies):.1f} ms, p95 "
              f"{latencies[int(0.95 * (len(latencies) - 1))]:.1f} ms, max "
              f"{latencies[-1]:.1f} ms")

        ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(throughput_jobs)]
        workers = _start_workers(url, tmp, 4)
        try:
            started = time.perf_counter()
            first = _wait_started(db, ids, 180)
            _wait_done(db, ids, 600)
            elapsed = time.perf_counter() - first
        finally:
            for process in workers:
                _stop(process)
        print(f"end to end, 4 worker processes, {throughput_jobs} no-op jobs (a job process "
              f"each): {throughput_jobs / elapsed:.1f} jobs/s "
              f"(workers' start-up excluded: {first - started:.1f} s)")

        ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(throughput_jobs)]
    rate = _claim_rate(db, throughput_jobs)
    print(f"claim -> fenced complete, 4 threads, no job processes: {rate:.0f} claims/s")
    db.dispose()


def _claim_rate(db: Any, n_jobs: int) -> float:
    from service.jobs.queue import claim_next_job, complete_job

    done = []

    def loop(name: str) -> None:
        while (lease := claim_next_job(db, worker=name, queues=["any", "cpu"],
                                       kinds=["bench_noop"], prefer_gpu=False,
                                       lease_seconds=30)) is not None:
            complete_job(db, lease, summary={}, arrays=[], device_used="cpu")
            done.append(lease.job_id)

    threads = [threading.Thread(target=loop, args=(f"t{i}",)) for i in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == len(set(done)) == n_jobs
    return n_jobs / (time.perf_counter() - started)


def _start_workers(url: str, tmp: Path, n: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "TABXAI_DATABASE_URL": url, "TABXAI_DATA_DIR": str(tmp / "data"),
           "TABXAI_EXTRA_KINDS": MODULE, "TABXAI_LOG_LEVEL": "WARNING"}
    return [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--device",
                              "cpu"], env=env, cwd=Path(__file__).resolve().parents[1])
            for _ in range(n)]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(30)


def _rows(db: Any, ids: list[str]) -> list[Any]:
    from sqlalchemy import select

    from service.jobs.tables import JobRecord

    with db.session() as session:
        return list(session.scalars(select(JobRecord).where(JobRecord.id.in_(ids))))


def _wait_done(db: Any, ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(db, ids)
        if all(r.status == "succeeded" for r in rows):
            return rows
        if any(r.status in ("failed", "cancelled") for r in rows):
            raise RuntimeError(f"a benchmark job did not succeed: {rows[0].error}")
        time.sleep(0.01)
    raise TimeoutError("the benchmark jobs did not finish")


def _wait_started(db: Any, ids: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.status != "queued" for r in _rows(db, ids)):
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError("no worker started")


def _database(url: str | None, tmp: Path) -> tuple[str, Any]:
    """A database URL for the run and a function that removes what it created."""
    if url is None:
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from service.db import create_db_engine

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_db_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return scoped.render_as_string(hide_password=False), drop


if __name__ == "__main__":
    main()
