"""Memory of a ``tree_shap`` job on 1,000,000 rows x 50 features of an XGBoost model.

    .venv/bin/python -m bench.tree_shap_memory
    .venv/bin/python -m bench.tree_shap_memory --rows 200000      # a quicker look

Issue 5's acceptance: the job runs with bounded memory (the worker's peak RSS below the
size of the result plus 1 GB) and streams its arrays. Real processes: ``tabxai serve``
(API only, SQLite in a temporary directory) gets a Parquet dataset of ``--rows`` x
``--features`` float32 columns and an XGBoost model (``--trees`` trees, depth 6); a
``tabxai worker`` started by this script runs a ``tree_shap`` values job on every row.
Every 0.1 s the script reads the high-water mark of the resident set (``VmHWM`` in
/proc/<pid>/status) of the worker, of its fork server (and multiprocessing's resource
tracker) and of each job process, and the sum of their proportional set sizes (``Pss``
in /proc/<pid>/smaps_rollup: pages the fork server shares with a job process counted
once). The bound is the size of ``shap_values`` (rows x features x 4 bytes) plus 1 GB
(10**9 bytes), for each process and for the sum. Then ``shap_values.npy`` is streamed
from the API to a file and checked: its shape, ``row_index``, and ``--check-rows`` rows
(the first, the last and a random sample) against XGBoost's own ``pred_contribs``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.tree_shap import Service, _difference, _write_parquet

logger = logging.getLogger("bench.tree_shap_memory")

# The bound is stated in decimal units: 1 GB = 10**9 bytes (stricter than a GiB).
GB = 10**9


@dataclass
class Peaks:
    """Peak memory (bytes) per process and role ("worker", "fork server", "resource
    tracker", "job process"), and the peak of the summed PSS of all of them."""

    by_pid: dict[int, tuple[str, int]] = field(default_factory=dict)
    total_pss: int = 0

    def role_peak(self, role: str) -> int:
        return max((peak for r, peak in self.by_pid.values() if r == role), default=0)


class TreeSampler(threading.Thread):
    """Samples VmHWM of a worker and its descendants, and the sum of their PSS."""

    def __init__(self, worker_pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.worker_pid = worker_pid
        self.interval = interval
        self.peaks = Peaks()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> Peaks:
        self._stop.set()
        self.join()
        return self.peaks

    def sample(self) -> None:
        import psutil

        try:
            worker = psutil.Process(self.worker_pid)
            children = worker.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        total = 0
        for process in [worker, *children]:
            status = _status(process.pid)
            if status is None:
                continue
            high_water, pss = status
            total += pss
            role = _role(process, self.worker_pid)
            _, before = self.peaks.by_pid.get(process.pid, (role, 0))
            self.peaks.by_pid[process.pid] = (role, max(before, high_water))
        self.peaks.total_pss = max(self.peaks.total_pss, total)


def _role(process: object, worker_pid: int) -> str:
    import psutil

    assert isinstance(process, psutil.Process)
    if process.pid == worker_pid:
        return "worker"
    if process.ppid() != worker_pid:
        return "job process"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        command = ""
    return "resource tracker" if "resource_tracker" in command else "fork server"


def _status(pid: int) -> tuple[int, int] | None:
    """(VmHWM, Pss) in bytes, or None when the process is gone."""
    try:
        status = _fields(Path(f"/proc/{pid}/status").read_text())
        rollup = _fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "VmHWM" not in status or "Pss" not in rollup:  # a zombie has no memory lines
        return None
    return int(status["VmHWM"].split()[0]) * 1024, int(rollup["Pss"].split()[0]) * 1024


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import xgboost

    names = [f"f{j}" for j in range(args.features)]
    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(20_000, args.features)).astype(np.float32)
    y = X_train[:, 0] + X_train[:, 1] * X_train[:, 2] + np.sin(X_train[:, 3])
    booster = xgboost.train({"max_depth": 6, "eta": 0.1, "nthread": -1},
                            xgboost.DMatrix(X_train, y, feature_names=names), args.trees)
    X = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    result_bytes = args.rows * args.features * 4
    bound = result_bytes + GB
    logger.info("tree_shap job on %d x %d float32, XGBoost %d trees depth 6; shap_values "
                "%.0f MiB, bound %.0f MiB", args.rows, args.features, args.trees,
                result_bytes / 2**20, bound / 2**20)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        booster.save_model(tmp / "model.json")
        _write_parquet(X, names, tmp / "rows.parquet")
        service = Service(tmp, workers=0)
        worker = None
        try:
            began = time.perf_counter()
            dataset = service.upload_dataset(tmp / "rows.parquet")
            model = service.upload_model(tmp / "model.json")
            logger.info("uploaded in %.1f s (not part of the job)", time.perf_counter() - began)
            (tmp / "rows.parquet").unlink()
            job_id = service.post_job({"kind": "tree_shap", "model_id": model,
                                       "dataset_id": dataset, "device": "cpu"})
            worker = service.worker()
            sampler = TreeSampler(worker.pid)
            sampler.start()
            job = _wait_logging(service, job_id)
            sampler.sample()
            peaks = sampler.stop()
            seconds = (_timestamp(job["finished_at"]) - _timestamp(job["started_at"]))
            logger.info("job ran %.1f s (%.0f rows/s)", seconds, args.rows / seconds)
            for pid, (role, peak) in sorted(peaks.by_pid.items()):
                logger.info("  pid %d %-16s peak RSS (VmHWM) %7.0f MiB", pid, role,
                            peak / 2**20)
            job_peak = peaks.role_peak("job process")
            worker_peak = peaks.role_peak("worker")
            logger.info("| process | peak MiB | bound MiB | within |")
            logger.info("|---|---:|---:|---|")
            for label, peak in (("worker (VmHWM)", worker_peak),
                                ("fork server (VmHWM)", peaks.role_peak("fork server")),
                                ("job process (VmHWM)", job_peak),
                                ("all of them (sum of PSS)", peaks.total_pss)):
                logger.info("| %s | %.0f | %.0f | %s |", label, peak / 2**20, bound / 2**20,
                            "yes" if peak < bound else "NO")
            _check_arrays(service, job_id, booster, X, names, args)
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
            service.close()


def _wait_logging(service: Service, job_id: str) -> dict[str, object]:
    """The job once it succeeded, logging its progress every 10 s."""
    while True:
        job = service.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return service.wait_job(job_id)
        logger.info("  %s %s %.0f%%", job["status"], job["stage"], 100 * job["progress"])
        time.sleep(10)


def _check_arrays(service: Service, job_id: str, booster: object, X: np.ndarray,
                  names: list[str], args: argparse.Namespace) -> None:
    import xgboost

    path = service.data_dir / "shap_values.npy"
    began = time.perf_counter()
    received = 0
    with service.client.stream("GET", f"/v1/jobs/{job_id}/result/arrays/shap_values.npy"
                               ) as response, path.open("wb") as out:
        response.raise_for_status()
        for data in response.iter_bytes():
            out.write(data)
            received += len(data)
    elapsed = time.perf_counter() - began
    values = np.load(path, mmap_mode="r")
    logger.info("shap_values.npy: %.0f MB streamed in %.1f s, shape %s %s", received / 1e6,
                elapsed, values.shape, values.dtype)
    if values.shape != (args.rows, args.features):
        raise AssertionError(f"expected shape {(args.rows, args.features)}, got {values.shape}")
    index = service.npy(job_id, "row_index")
    if not np.array_equal(index, np.arange(args.rows)):
        raise AssertionError("row_index is not 0..n-1")
    rng = np.random.default_rng(1)
    rows = np.unique(np.concatenate([[0, 1, args.rows - 1],
                                     rng.choice(args.rows, args.check_rows, replace=False)]))
    assert isinstance(booster, xgboost.Booster)
    direct = booster.predict(xgboost.DMatrix(X[rows], feature_names=names),
                             pred_contribs=True)[:, :-1]
    difference = _difference(np.asarray(values[rows]), direct)
    logger.info("%d rows against xgboost pred_contribs: max |diff| / max |phi| = %.1e (%s)",
                len(rows), difference, "equal" if difference <= 1e-5 else "DIFFERENT")


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--check-rows", type=int, default=1_000)
    args = parser.parse_args(argv)
    if min(args.rows, args.features, args.trees) < 1 or args.check_rows < 0:
        parser.error("--rows, --features and --trees must be >= 1, --check-rows >= 0")
    args.check_rows = min(args.check_rows, args.rows)
    return args


if __name__ == "__main__":
    main()
