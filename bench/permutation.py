"""Benchmark: our permutation importance against scikit-learn's on the same models.

Cases: 50,000 x 30 with XGBoost (200 trees, depth 6) and an ONNX MLP, and 50,000 x 300
with XGBoost. For each: scikit-learn's default (n_jobs=None), scikit-learn n_jobs=-1, and
ours (every core, or the GPU with ``--device cuda``), all in one process; then the same
as a job of a real ``tabxai serve`` (upload excluded; POST to succeeded); prints seconds,
ratios and the largest difference. scikit-learn always runs on the CPU, as a user calls it.
On the GPU an ONNX model runs in float32 on CUDA kernels, so its differences from
scikit-learn are float32 rounding (about 1e-6 of the score) rather than 0.

    .venv/bin/python -m bench.permutation [--rows 50000] [--repeats 5] [--features 30 300]
                                          [--device cpu|cuda] [--models xgboost onnx]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.inspection import permutation_importance as sklearn_permutation_importance
from sklearn.neural_network import MLPRegressor

from explainers.permutation import permutation_importance
from models.loading import load_model

logger = logging.getLogger("bench.permutation")


class OnnxRegressor(RegressorMixin, BaseEstimator):
    """The ONNX file as a scikit-learn estimator, for scikit-learn's function."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnnxRegressor:
        self.fitted_ = True
        return self

    def __getstate__(self) -> dict[str, Any]:
        # joblib's worker processes open their own session from the path.
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def predict(self, X: np.ndarray) -> np.ndarray:
        if "session" not in self.__dict__:
            self.__dict__["session"] = onnxruntime.InferenceSession(
                self.path, providers=["CPUExecutionProvider"])
        session = self.__dict__["session"]
        name = session.get_inputs()[0].name
        return session.run(None, {name: X.astype(np.float32)})[0].reshape(-1)


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    w = rng.normal(size=features) * (rng.random(features) < 0.3)
    y = X @ w + np.sin(X[:, 0] * 2) + X[:, 1] * X[:, 2] + 0.3 * rng.normal(size=rows)
    return X, y


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def run_job(path: Path, X: np.ndarray, y: np.ndarray, repeats: int, device: str,
            job_repeat: int, expected: np.ndarray) -> float:
    """The same case as a job of a real ``tabxai serve`` (SQLite, one worker): upload the
    model and the data (excluded), then POST to succeeded, ``job_repeat`` times; the best
    counts (the machine is shared). Checks the job's importances against the function's."""
    import pandas as pd

    from bench.tree_shap import running_service

    names = [f"x{j}" for j in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=names)
    frame["y"] = y
    data_path = path.with_suffix(".parquet")
    frame.to_parquet(data_path, index=False)
    service_dir = path.parent / f"service-{path.stem}"
    service_dir.mkdir(exist_ok=True)
    with running_service(service_dir, workers=1, device=device) as service:
        # An ONNX graph names no columns: give them (jobs refuse it without).
        model_id = service.upload_model(path, feature_names=json.dumps(names)) \
            if path.suffix == ".onnx" else service.upload_model(path)
        with data_path.open("rb") as f:
            response = service.client.post(
                "/v1/datasets?name=bench&target=y", content=f,
                headers={"Content-Type": "application/vnd.apache.parquet"})
        if response.status_code != 201:
            raise RuntimeError(f"upload: {response.status_code} {response.text}")
        body = {"kind": "permutation_importance", "model_id": model_id,
                "dataset_id": response.json()["id"], "device": device,
                "params": {"n_repeats": repeats, "random_state": 0}}
        timings = [service.run_job(body) for _ in range(job_repeat)]
        best = min(timings, key=lambda t: t.seconds)
        summary = service.client.get(f"/v1/jobs/{best.job_id}/result").json()
    got = np.array([entry["values"] for entry in sorted(summary["importances"],
                                                         key=lambda e: e["index"])])
    diff = float(np.abs(got - expected).max())
    if diff > 1e-9:
        raise AssertionError(f"the job's importances differ from the function's by {diff}")
    return best.seconds


def run_case(label: str, model: Any, estimator: Any, X: np.ndarray, y: np.ndarray,
             repeats: int, device: str = "cpu", path: Path | None = None,
             job_repeat: int = 0) -> None:
    names = [f"x{j}" for j in range(X.shape[1])]
    t_default, ref = timed(lambda: sklearn_permutation_importance(
        estimator, X, y, n_repeats=repeats, random_state=0))
    t_all, _ = timed(lambda: sklearn_permutation_importance(
        estimator, X, y, n_repeats=repeats, random_state=0, n_jobs=-1))
    def ours_once() -> tuple[float, Any]:
        return timed(lambda: permutation_importance(
            model, X, y, n_repeats=repeats, random_state=0, feature_names=names,
            device=device))

    # The first call pays for starting the library on the device (a job process does
    # that once); the second finds the model placed, as further calls of a worker would.
    t_ours, ours = ours_once()
    t_warm, _ = ours_once() if device == "cuda" else (t_ours, None)
    best = min(t_default, t_all)
    diff = float(np.abs(ours.importances - ref.importances).max())
    sys.stdout.write(
        f"{label:<28} sklearn default {t_default:7.2f}s  sklearn n_jobs=-1 {t_all:7.2f}s  "
        f"ours {t_ours:7.2f}s ({ours.provenance['path']}, "
        f"{model.place(device)})  "
        f"vs default x{t_default / t_ours:5.2f}  vs best x{best / t_ours:5.2f}  "
        f"max|diff| {diff:.1e}\n")
    if device == "cuda":
        sys.stdout.write(
            f"{'':<28} ours again, model already on the device {t_warm:7.3f}s  "
            f"vs default x{t_default / t_warm:5.2f}  vs best x{best / t_warm:5.2f}\n")
    if path is not None and job_repeat > 0:
        t_job = run_job(path, X, y, repeats, device, job_repeat, ours.importances)
        sys.stdout.write(
            f"{'':<28} job end to end (POST to succeeded, best of {job_repeat}) "
            f"{t_job:7.2f}s  vs default x{t_default / t_job:5.2f}  "
            f"vs best x{best / t_job:5.2f}  (importances equal to the function's)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--features", type=int, nargs="+", default=[30, 300],
                        help="feature counts to run (the MLP runs with 30)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where our function predicts (the job's device)")
    parser.add_argument("--models", nargs="+", choices=["xgboost", "onnx"],
                        default=["xgboost", "onnx"])
    parser.add_argument("--job-repeat", type=int, default=2,
                        help="jobs per case through a real service, best counts (0: none)")
    args = parser.parse_args()
    sys.stdout.write(f"{args.rows} rows, {args.repeats} repeats, ours on {args.device}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for features in args.features:
            X, y = make_data(args.rows, features, seed=features)
            if "xgboost" in args.models:
                import xgboost

                est = xgboost.XGBRegressor(n_estimators=200, max_depth=6).fit(X, y)
                path = Path(tmp) / f"xgb{features}.ubj"
                est.get_booster().save_model(path)
                run_case(f"xgboost {args.rows}x{features}", load_model(path, format="xgboost"),
                         est, X, y, args.repeats, args.device, path, args.job_repeat)
            if features == 30 and "onnx" in args.models:
                from skl2onnx import to_onnx

                mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=20,
                                   random_state=0).fit(X[:5000], y[:5000])
                onnx_path = Path(tmp) / "mlp.onnx"
                onnx_path.write_bytes(
                    to_onnx(mlp, X[:1].astype(np.float32)).SerializeToString())
                run_case(f"onnx mlp {args.rows}x{features}",
                         load_model(onnx_path, format="onnx"),
                         OnnxRegressor(str(onnx_path)).fit(X, y), X, y, args.repeats,
                         args.device, onnx_path, args.job_repeat)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
