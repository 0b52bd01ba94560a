"""LoadedModel.predict against calling each library directly, on 100k rows x 30 features.

Run: .venv/bin/python bench/predict.py [--rows 100000] [--threads N]
Prints one line per model: the direct call's time, LoadedModel.predict's time (best of
3), and their ratio (target: at most 1.2).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightgbm
import numpy as np
import onnxruntime
import skops.io
import xgboost
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from models.loading import load_model

N_FEATURES = 30


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(args.train_rows, N_FEATURES))
    y_train = X_train[:, 0] + X_train[:, 1] * X_train[:, 2] + 0.1 * rng.normal(size=args.train_rows)
    X = rng.normal(size=(args.rows, N_FEATURES))
    root = Path(tempfile.mkdtemp(prefix="tabxai-bench-"))
    t = args.threads

    booster = xgboost.train(
        {"max_depth": 6, "nthread": t, "tree_method": "hist"},
        xgboost.DMatrix(X_train, y_train),
        500,
    )
    booster.save_model(root / "xgb.ubj")
    lgb = lightgbm.train(
        {"num_leaves": 63, "num_threads": t, "verbose": -1}, lightgbm.Dataset(X_train, y_train), 500
    )
    lgb.save_model(root / "lgb.txt")
    forest = RandomForestRegressor(n_estimators=100, max_depth=12, n_jobs=t, random_state=0).fit(
        X_train, y_train
    )
    skops.io.dump(forest, root / "rf.skops")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=20, random_state=0).fit(
            X_train, y_train
        )
    (root / "mlp.onnx").write_bytes(
        to_onnx(mlp, X_train[:1].astype(np.float32)).SerializeToString()
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = t
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(root / "mlp.onnx"), options, providers=["CPUExecutionProvider"]
    )
    booster.set_param({"nthread": t})

    cases = [
        (
            "xgboost 500 trees depth 6",
            "xgb.ubj",
            "xgboost",
            lambda: booster.inplace_predict(X, predict_type="margin"),
        ),
        (
            "lightgbm 500 trees 63 leaves",
            "lgb.txt",
            "lightgbm",
            lambda: lgb.predict(X, raw_score=True, num_threads=t),
        ),
        ("sklearn RF 100 trees depth 12", "rf.skops", "sklearn", lambda: forest.predict(X)),
        (
            "onnx MLP 64x64",
            "mlp.onnx",
            "onnx",
            lambda: session.run(None, {"X": X.astype(np.float32)}),
        ),
    ]
    print(f"rows={args.rows} features={N_FEATURES} threads={t}")
    print(f"{'model':32s} {'direct s':>9s} {'tabxai s':>9s} {'ratio':>6s}")
    for label, file, fmt, direct in cases:
        model = load_model(root / file, format=fmt, n_threads=t)
        if fmt == "sklearn":
            model.native.set_params(n_jobs=t)
            forest.set_params(n_jobs=t)
        direct()
        model.predict(X[:1000])
        d = best_of(direct)
        ours = best_of(lambda m=model: m.predict(X))
        print(f"{label:32s} {d:9.3f} {ours:9.3f} {ours / d:6.2f}")


if __name__ == "__main__":
    main()
