"""Build the smoke-test assets: a small dataset, four small models, and their numbers.

Run ``python -m service.smoke.build_assets`` (from the repository root, with the dev
extras installed: skl2onnx trains the ONNX model) to write ``service/smoke/assets/``:

- ``data.csv``: 300 rows, features ``f0``..``f5`` (4 decimals) and a binary target ``y``.
- ``xgboost.json``: XGBoost ``binary:logistic``, 20 trees of depth 3.
- ``lightgbm.txt``: LightGBM binary, 20 trees of at most 8 leaves and depth 4.
- ``forest.skops``: scikit-learn RandomForestClassifier, 20 trees of depth 4.
- ``mlp.onnx``: scikit-learn MLPClassifier (8 hidden units) converted by skl2onnx.
- ``expected.json``: what each smoke job must return, from :func:`compute_expected`.

:func:`compute_expected` reads only the files above, so the expected numbers can be
recomputed from the shipped models at any time (the test suite does). The references
are the libraries a user would call directly: XGBoost's own TreeSHAP for ``tree_shap``,
``sklearn.inspection.permutation_importance`` for ``permutation_importance``, and the
method functions of ``explainers`` on the models read as the libraries save them for
``feature_vectors`` and ``rashomon_interactions`` (methods with no other implementation
of these exact numbers).
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.csv as pacsv

from service.smoke.runner import (
    ASSETS,
    FEATURE_NAMES,
    JOB_PARAMS,
    MODEL_FILES,
    N_ROWS,
    TARGET,
)

logger = logging.getLogger(__name__)

SEED = 0
N_TREES = 20


def read_data(assets_dir: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """X float64 [300, 6] and y int64 [300] of ``data.csv``, parsed as the service does
    (pyarrow's CSV reader, correctly rounded)."""
    table = pacsv.read_csv(assets_dir / "data.csv")
    X = np.column_stack([table.column(name).to_numpy().astype(np.float64)
                         for name in FEATURE_NAMES])
    y = table.column(TARGET).to_numpy().astype(np.int64)
    return X, y


def write_data(assets_dir: Path) -> None:
    """A seeded binary problem with main effects, one interaction (f1·f2) and a noise
    feature (f5); values rounded to 4 decimals so every CSV parser reads the same doubles."""
    rng = np.random.default_rng(SEED)
    X = np.round(rng.normal(size=(N_ROWS, len(FEATURE_NAMES))), 4)
    signal = X[:, 0] + 0.8 * X[:, 1] * X[:, 2] - 0.5 * X[:, 3] + 0.3 * X[:, 4]
    y = (signal + 0.3 * rng.normal(size=N_ROWS) > 0).astype(np.int64)
    lines = [",".join([*FEATURE_NAMES, TARGET])]
    lines += [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in zip(X, y,
                                                                                     strict=True)]
    (assets_dir / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_models(assets_dir: Path) -> None:
    """Train the four models on ``data.csv`` and save them as a user would."""
    import lightgbm
    import pandas as pd
    import skops.io
    import xgboost
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = read_data(assets_dir)
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)

    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1,
         "seed": SEED},
        xgboost.DMatrix(X, y, feature_names=FEATURE_NAMES), N_TREES)
    booster.save_model(assets_dir / MODEL_FILES["xgboost"])

    lgb = lightgbm.train(
        {"objective": "binary", "num_leaves": 8, "max_depth": 4, "min_data_in_leaf": 10,
         "learning_rate": 0.2, "num_threads": 1, "verbose": -1, "seed": SEED,
         "deterministic": True},
        lightgbm.Dataset(frame, y), N_TREES)
    lgb.save_model(assets_dir / MODEL_FILES["lightgbm"])

    forest = RandomForestClassifier(n_estimators=N_TREES, max_depth=4, random_state=SEED,
                                    n_jobs=1).fit(frame, y)
    # Deflated: the uncompressed schema of 20 trees alone is 340 KB of JSON.
    skops.io.dump(forest, assets_dir / MODEL_FILES["sklearn"],
                  compression=zipfile.ZIP_DEFLATED, compresslevel=9)

    with warnings.catch_warnings():
        # A smoke model need not converge; it needs to be fixed and small.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300,
                            random_state=SEED).fit(X, y)
    proto = to_onnx(mlp, X[:1].astype(np.float32), options={"zipmap": False},
                    target_opset=17)
    (assets_dir / MODEL_FILES["onnx"]).write_bytes(proto.SerializeToString())


def compute_expected(assets_dir: Path = ASSETS) -> dict[str, Any]:
    """The numbers each smoke job must return, computed from the files in ``assets_dir``
    with the reference libraries (never through the service). JSON-able."""
    X, y = read_data(assets_dir)
    return {
        "n_rows": int(X.shape[0]),
        "feature_names": list(FEATURE_NAMES),
        "tree_shap": _tree_shap(assets_dir, X),
        "permutation_importance": _permutation(assets_dir, X, y),
        "feature_vectors": _feature_vectors(assets_dir),
        "rashomon_interactions": _rashomon(assets_dir, X, y),
    }


def _tree_shap(assets_dir: Path, X: npt.NDArray[np.float64]) -> dict[str, Any]:
    """XGBoost's own TreeSHAP (pred_contribs / pred_interactions) on every row."""
    import xgboost

    booster = xgboost.Booster(model_file=str(assets_dir / MODEL_FILES["xgboost"]))
    booster.set_param({"nthread": 1})
    matrix = xgboost.DMatrix(X, feature_names=FEATURE_NAMES)
    contribs = booster.predict(matrix, pred_contribs=True).astype(np.float64)
    pairs = booster.predict(matrix, pred_interactions=True).astype(np.float64)
    f = len(FEATURE_NAMES)
    assert JOB_PARAMS["tree_shap"]["interactions"]
    return {
        "base_value": float(contribs[0, -1]),
        "mean_abs_shap": {name: float(v) for name, v in
                          zip(FEATURE_NAMES, np.abs(contribs[:, :f]).mean(axis=0), strict=True)},
        "interaction_importance": np.abs(pairs[:, :f, :f]).mean(axis=0).tolist(),
    }


def _permutation(assets_dir: Path, X: npt.NDArray[np.float64],
                 y: npt.NDArray[np.int64]) -> dict[str, Any]:
    """scikit-learn's permutation_importance on the saved forest, the job's params."""
    import pandas as pd
    import skops.io
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import get_scorer

    path = assets_dir / MODEL_FILES["sklearn"]
    # Our own file, written by train_models: every type in it is one we put there.
    forest = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    params = JOB_PARAMS["permutation_importance"]
    frame = pd.DataFrame(X, columns=FEATURE_NAMES)
    result = permutation_importance(forest, frame, y, scoring=params["scoring"],
                                    n_repeats=params["n_repeats"],
                                    random_state=params["random_state"], n_jobs=1)
    return {
        "scoring": params["scoring"],
        "baseline_score": float(get_scorer(params["scoring"])(forest, frame, y)),
        "mean": {name: float(v) for name, v in
                 zip(FEATURE_NAMES, result.importances_mean, strict=True)},
    }


def _feature_vectors(assets_dir: Path) -> dict[str, Any]:
    """The method on the LightGBM booster as LightGBM loads it, read into trees."""
    import lightgbm

    from explainers.feature_vectors import FeatureVectorsParams, feature_vectors
    from models.readers import read_ensemble

    booster = lightgbm.Booster(model_file=str(assets_dir / MODEL_FILES["lightgbm"]))
    result = feature_vectors(read_ensemble(booster),
                             params=FeatureVectorsParams(**JOB_PARAMS["feature_vectors"]),
                             feature_names=FEATURE_NAMES)
    summary = result.summary()
    return {
        "top_feature": summary["features"][0]["feature"],
        "n_trees": summary["n_trees"],
        "n_rules": summary["n_rules"],
        "importance": {f["feature"]: f["importance"] for f in summary["features"]},
        "x": {f["feature"]: f["x"] for f in summary["features"]},
        "y": {f["feature"]: f["y"] for f in summary["features"]},
    }


def _rashomon(assets_dir: Path, X: npt.NDArray[np.float64],
              y: npt.NDArray[np.int64]) -> dict[str, Any]:
    """The method on the ONNX model's class probabilities, as the service predicts them
    (same loader, same batch size), with the job's params."""
    from explainers.rashomon import RashomonParams, rashomon_interactions
    from models.loading import load_model
    from service.methods.rashomon import batch_rows_for

    model = load_model(assets_dir / MODEL_FILES["onnx"], format="onnx",
                       feature_names=list(FEATURE_NAMES), task="binary")
    result = rashomon_interactions(
        lambda rows: model.predict(rows, output="probability"), X, y, task="binary",
        feature_names=FEATURE_NAMES, params=RashomonParams(**JOB_PARAMS["rashomon_interactions"]),
        batch_rows=batch_rows_for(X.shape[1]), n_jobs=1)
    summary = result.summary()
    return {
        "loss": summary["loss"],
        "loss_ref": summary["loss_ref"],
        "epsilon": summary["epsilon"],
        "interactions": {",".join(i["features"]): {k: i[k] for k in
                                                   ("reference", "min", "max", "mean")}
                         for i in summary["interactions"]},
    }


def build(assets_dir: Path = ASSETS) -> dict[str, Any]:
    """Write every asset into ``assets_dir`` and return the expected numbers."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    write_data(assets_dir)
    train_models(assets_dir)
    expected = compute_expected(assets_dir)
    (assets_dir / "expected.json").write_text(json.dumps(expected, indent=1) + "\n",
                                              encoding="utf-8")
    return expected


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m service.smoke.build_assets",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS,
                        help=f"folder to write (default {ASSETS})")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(message)s")
    build(args.out)
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir())}
    logger.info("wrote %s (%d bytes in all)", ", ".join(f"{k} {v}" for k, v in sizes.items()),
                sum(sizes.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
