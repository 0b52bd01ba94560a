"""Test-only job kinds and helpers for the job tests; never shipped.

This module defines the kinds ``test_sleep``, ``test_count``, ``test_oom``,
``test_fail``, ``test_arrays`` and ``test_needs_model`` (``KINDS``), as a plug-in does.
The service tests' settings name it in ``extra_kinds`` (tests/service/conftest.py), so
the apps and workers they start register it; worker processes started by the tests get
it through ``TABXAI_EXTRA_KINDS=tests.service.jobs_testkinds``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import select

from service.config import Settings
from service.db import Database
from service.jobs.tables import FINAL_STATUSES, JobRecord
from service.jobs.worker import Worker
from service.registry import (
    CheckContext,
    JobInputError,
    JobKind,
    JobOutput,
    PlotSpec,
    RunContext,
)
from service.startup import method_registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.service.jobs_testkinds"
FAST = {"lease_seconds": 2.0, "heartbeat_seconds": 0.3, "poll_seconds": 0.05}


def _no_check(ctx: CheckContext[Any]) -> None:
    return None


def _rows_estimate(ctx: CheckContext[Any]) -> dict[str, Any]:
    return {"rows_to_predict": ctx.dataset.n_rows, "seconds": 0.1}


# -- test_sleep: sleeps in steps, reporting progress; one array row per step ----------

class SleepParams(BaseModel):
    steps: int = Field(10, ge=1, le=10_000)
    step_seconds: float = Field(0.05, ge=0.0, le=5.0)
    chunk_rows: int = Field(4, ge=1)


def run_sleep(ctx: RunContext[SleepParams]) -> JobOutput:
    # Small chunks: an attempt stopped midway leaves chunks for the tests to look for.
    writer = ctx.array_writer("steps", "int64", chunk_rows=ctx.params.chunk_rows)
    for step in range(ctx.params.steps):
        ctx.progress(step / ctx.params.steps, "sleeping")
        time.sleep(ctx.params.step_seconds)
        writer.append(np.array([step]))
    return JobOutput(summary={"steps": ctx.params.steps, "attempt": ctx.attempt})


# -- test_count: records each run in a file per job, to detect double runs ------------

class CountParams(BaseModel):
    counter_dir: str


def run_count(ctx: RunContext[CountParams]) -> JobOutput:
    with open(Path(ctx.params.counter_dir) / ctx.job_id, "a") as f:
        f.write(f"{os.getpid()}\n")
    return JobOutput(summary={"counted": True})


# -- test_oom: allocates past the memory limit -----------------------------------------

class OomParams(BaseModel):
    gigabytes: float = Field(2.0, gt=0)


def run_oom(ctx: RunContext[OomParams]) -> JobOutput:
    hog = np.ones(int(ctx.params.gigabytes * 2**30) // 8)
    return JobOutput(summary={"sum": float(hog.sum())})


# -- test_fail: a bad-input error --------------------------------------------------------

class FailParams(BaseModel):
    code: str = "bad_input"
    message: str = "The input is bad; fix it."


def run_fail(ctx: RunContext[FailParams]) -> JobOutput:
    raise JobInputError(ctx.params.code, ctx.params.message)


# -- test_arrays: a chunked float32 matrix, a 3-D array, an index, and a plot --------

class ArraysParams(BaseModel):
    n_rows: int = Field(70_000, ge=0, le=2_000_000)
    n_features: int = Field(3, ge=1, le=100)
    wide: list[int] = Field(default_factory=list, max_length=4, description="Shapes "
                            "[rows, columns] of a further array 'wide' of zeros.")


def values_matrix(n_rows: int, n_features: int, start: int = 0) -> np.ndarray:
    """values[i, j] = i / 2 + j: exact in float32 for the sizes used."""
    rows = np.arange(start, start + n_rows, dtype=np.float64)[:, None] / 2
    return (rows + np.arange(n_features)[None, :]).astype(np.float32)


CUBE = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3) / 4


def run_arrays(ctx: RunContext[ArraysParams]) -> JobOutput:
    table = ctx.load_dataset()
    n, f = ctx.params.n_rows, ctx.params.n_features
    writer = ctx.array_writer("values", "float32", (f,), axes=("feature",),
                              labels=[f"f{j}" for j in range(f)])
    for start in range(0, n, 10_000):
        writer.append(values_matrix(min(10_000, n - start), f, start))
        ctx.progress(start / max(n, 1), "writing")
    wide = {"wide": np.zeros(ctx.params.wide, dtype=np.float32)} if ctx.params.wide else {}
    return JobOutput(
        summary={"n_rows": n, "dataset_rows": table.num_rows, "mean": float(n / 4)},
        arrays={"cube": CUBE, "row_index": np.arange(4), **wide},
        array_axes={"cube": ("output", "feature")},
        array_labels={"cube": ["a", "b", "c"]},
    )


class ValuesPlotOptions(BaseModel):
    column: int = Field(0, ge=0)


def draw_values(summary: dict[str, Any], arrays: dict[str, np.ndarray], *, column: int = 0
                ) -> Figure:
    from matplotlib.figure import Figure

    values = arrays["values"]
    if column >= values.shape[1]:
        raise ValueError(f"column {column} does not exist")
    figure = Figure(figsize=(3, 2))
    axes = figure.add_subplot()
    axes.plot(values[:, column])
    axes.set_title(f"{summary['n_rows']} rows")
    return figure


def _needs_model_run(ctx: RunContext[BaseModel]) -> JobOutput:
    ctx.load_model()
    return JobOutput(summary={})


class NoParams(BaseModel):
    pass


KINDS = [
    JobKind(name="test_sleep", params_model=SleepParams, needs_model=False,
            check=_no_check, estimate=_rows_estimate, run=run_sleep),
    JobKind(name="test_count", params_model=CountParams, needs_model=False,
            check=_no_check, estimate=_rows_estimate, run=run_count),
    JobKind(name="test_oom", params_model=OomParams, needs_model=False,
            check=_no_check, estimate=_rows_estimate, run=run_oom),
    JobKind(name="test_fail", params_model=FailParams, needs_model=False,
            check=_no_check, estimate=_rows_estimate, run=run_fail),
    JobKind(name="test_arrays", params_model=ArraysParams, needs_model=False,
            check=_no_check, estimate=_rows_estimate, run=run_arrays,
            plots={"values": PlotSpec(draw=draw_values, arrays=("values",), max_rows=1000,
                                      options=ValuesPlotOptions),
                   "never": PlotSpec(draw=draw_values, available=lambda summary: False)}),
    JobKind(name="test_needs_model", params_model=NoParams, needs_model=True,
            check=_no_check, estimate=_rows_estimate, run=_needs_model_run),
]


# -- helpers -------------------------------------------------------------------------

def with_test_kinds(settings: Settings, *modules: str) -> Settings:
    """``settings`` whose ``extra_kinds`` add this module's kinds, and ``modules``'."""
    extra = tuple(dict.fromkeys([*settings.extra_kinds, MODULE, *modules]))
    return settings.model_copy(update={"extra_kinds": extra})


def fast_settings(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={**FAST, **overrides})


def upload_dataset(client: Any, n_rows: int = 5) -> str:
    body = "a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(n_rows))
    response = client.post("/v1/datasets?name=t&target=y", content=body,
                           headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def post_job(client: Any, kind: str, dataset_id: str, **params: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"kind": kind, "dataset_id": dataset_id,
                                             "params": params})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_row(db: Database, job_id: str) -> JobRecord:
    with db.session() as session:
        job = session.scalar(select(JobRecord).where(JobRecord.id == job_id))
        assert job is not None
        return job


def wait_final(db: Database, job_id: str, timeout: float = 30.0) -> JobRecord:
    return wait_for(lambda: (j := job_row(db, job_id)).status in FINAL_STATUSES and j,
                    timeout, f"{job_id} to end")  # type: ignore[no-any-return]


@contextmanager
def running_worker(db: Database, settings: Settings, *, concurrency: int = 1,
                   name: str | None = None) -> Iterator[Worker]:
    """A real Worker (job processes and all) in a thread of the test process, with the
    kinds ``settings`` register (``extra_kinds``)."""
    worker = Worker(db, settings, method_registry(settings), concurrency=concurrency,
                    name=name)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"


def start_worker_process(settings: Settings, database_url: str, *concurrency_args: str
                         ) -> subprocess.Popen[bytes]:
    """``tabxai worker`` as its own OS process, knowing the test kinds."""
    env = {**os.environ, "TABXAI_DATABASE_URL": database_url,
           "TABXAI_DATA_DIR": str(settings.data_dir),
           "TABXAI_LEASE_SECONDS": str(settings.lease_seconds),
           "TABXAI_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
           "TABXAI_POLL_SECONDS": str(settings.poll_seconds),
           "TABXAI_JOB_MEMORY_BYTES": str(settings.job_memory_bytes),
           "TABXAI_EXTRA_KINDS": MODULE, "TABXAI_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--device", "cpu",
                             *concurrency_args], cwd=ROOT, env=env)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout)
